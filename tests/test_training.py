"""training.py: the loss and the update, held to known answers, to finite differences of the
NumPy reference, and to each other (accumulation, memory-saving blocks, precision, replicas)."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import fast
import model
import reference
import training
from helpers import random_tokens


@pytest.fixture(scope="module")
def values(models_dir, tiny_model):
    """{checkpoint name: float32 array} of the tiny model."""
    path = os.path.join(models_dir, tiny_model)
    hparams = model.load_hparams(path)
    return hparams, model.read_checkpoint(model.find_checkpoint(path), hparams)


def weights(trainer):
    return {name: value.numpy() for name, value in trainer.checkpoint_values().items()}


def gradients(values, hparams, batch, dtype=tf.float32, memory_saving=False, inputs=None, losses=None):
    """{checkpoint name: gradient of the mean loss of batch}, in the checkpoint's shapes, as the
    Trainer computes it (`training.window_losses`) or by `losses(params, inputs, batch)`;
    `inputs` (default: batch) are the tokens the model reads."""
    params = tf.nest.map_structure(tf.Variable, model.nest_params(values, hparams))
    inputs = tf.constant(batch if inputs is None else inputs)
    with tf.GradientTape() as tape:
        compute = model.cast_params(params, dtype)
        if losses is None:
            loss = tf.reduce_mean(training.window_losses(compute, hparams, inputs, tf.constant(batch), memory_saving))
        else:
            loss = tf.reduce_mean(losses(compute, inputs, batch))
    flat = tape.gradient(loss, tf.nest.flatten(params))
    nested = tf.nest.pack_sequence_as(params, [tf.convert_to_tensor(g) for g in flat])
    return {name: value.numpy() for name, value in model.checkpoint_values(nested).items()}


def reference_loss(hparams, w, batch):
    return -np.mean([reference.logprobs(hparams, w, row) for row in batch])


# --- Known answers -------------------------------------------------------------------------

def test_a_model_with_zero_embeddings_has_the_loss_of_a_uniform_guess(values):
    """wte = 0 makes every logit 0: each prediction costs log(n_vocab) nats."""
    hparams, v = values
    trainer = training.Trainer({**v, "model/wte": np.zeros_like(v["model/wte"])}, hparams)
    np.testing.assert_allclose(trainer.loss(random_tokens(hparams.n_vocab, 2, 9)), np.log(hparams.n_vocab), rtol=1e-6)


def test_the_loss_is_the_mean_cross_entropy_of_the_next_token_predictions(values, models_dir, tiny_model):
    hparams, v = values
    batch = random_tokens(hparams.n_vocab, 3, 12)
    rh, rw = reference.load(os.path.join(models_dir, tiny_model))
    np.testing.assert_allclose(training.Trainer(v, hparams).loss(batch), reference_loss(rh, rw, batch), rtol=1e-5)


# --- Equivalence with an independent implementation ------------------------------------------

def test_gradients_agree_with_finite_differences_of_the_reference(values, models_dir, tiny_model):
    """For each variable, the derivative of the reference's float64 loss along a random
    direction, by central differences, equals the gradient's dot product with that direction."""
    hparams, v = values
    batch = random_tokens(hparams.n_vocab, 2, 10, seed=1)
    rh, rw = reference.load(os.path.join(models_dir, tiny_model))
    grads = gradients(v, hparams, batch)
    rng, eps = np.random.RandomState(0), 1e-5
    for name in model.checkpoint_shapes(hparams):
        direction = rng.randn(*rw[name].shape)
        direction /= np.linalg.norm(direction)
        plus, minus = dict(rw), dict(rw)
        plus[name], minus[name] = rw[name] + eps * direction, rw[name] - eps * direction
        numeric = (reference_loss(rh, plus, batch) - reference_loss(rh, minus, batch)) / (2 * eps)
        assert np.sum(grads[name] * direction) == pytest.approx(numeric, rel=1e-3, abs=1e-6), name


def test_window_losses_and_their_gradients_are_the_plain_output_layers_and_cross_entropys(values):
    """`window_losses` (the last position left out before the output layer, the output layer and
    the loss one) gives the losses and gradients of `model.unembed` and TensorFlow's softmax
    cross-entropy, here with inputs that differ from the targets, as --noise makes them."""
    hparams, v = values
    batch = random_tokens(hparams.n_vocab, 2, 10, seed=2)
    inputs = random_tokens(hparams.n_vocab, 2, 10, seed=3)
    params = model.cast_params(model.nest_params(v, hparams), tf.float32)

    def plain(params, inputs, targets):
        return training.predictions_loss(training.forward(params, hparams, inputs), targets)
    np.testing.assert_allclose(training.window_losses(params, hparams, tf.constant(inputs), tf.constant(batch)),
                               plain(params, tf.constant(inputs), batch), rtol=1e-6)
    fast_way = gradients(v, hparams, batch, inputs=inputs)
    for name, value in gradients(v, hparams, batch, inputs=inputs, losses=plain).items():
        # each way rounds p - 1 at the targets differently: within float32's rounding of the largest
        np.testing.assert_allclose(fast_way[name], value, rtol=1e-5, atol=1e-5 * np.abs(value).max(), err_msg=name)


@pytest.mark.parametrize("embedding_use", ["gather", "matmul"])
def test_the_embeddings_gradient_is_added_row_by_row_into_the_output_layers(embedding_use):
    """`fast.tied_embeddings`: wte's gradient, from the embedding and from the output layer, is
    TensorFlow's sum of the two, here with a token read three times. A gather's gradient, the
    embedding's rows, is added into the output layer's dense one (TensorScatterAdd), never made
    dense first (UnsortedSegmentSum); a dense one is added as it is."""
    wte = tf.constant(np.random.RandomState(0).randn(7, 3), tf.float32)  # [n_vocab, n_embd]
    ids = tf.constant([[1, 4, 1], [6, 1, 0]])

    def loss(embedding, output_layer):
        read = tf.gather(embedding, ids) if embedding_use == "gather" else tf.matmul(embedding, embedding, transpose_a=True)
        return tf.reduce_sum(read ** 2) + tf.reduce_sum(tf.matmul(output_layer, output_layer, transpose_b=True) ** 2)

    @tf.function
    def gradient(tied):
        with tf.GradientTape() as tape:
            tape.watch(wte)
            value = loss(*fast.tied_embeddings(wte)) if tied else loss(wte, wte)
        return tape.gradient(value, wte)
    np.testing.assert_allclose(gradient(True), gradient(False), rtol=1e-6)
    ops = {op.type for op in gradient.get_concrete_function(True).graph.get_operations()}
    assert ("TensorScatterAdd" in ops) == (embedding_use == "gather") and "UnsortedSegmentSum" not in ops


def test_the_targets_gradient_is_made_in_float32_where_bfloat16_would_cancel():
    """With the identity as output layer the logits are h, and h's gradient is the softmax less
    one at the target. At p = 0.9926 bfloat16's nearest p is 0.9922, which would make p - 1 5%
    off; made in float32 and then rounded, it is within bfloat16's 0.4%."""
    h = tf.constant([[[6.0, 0.0, 0.0, 0.0]]], tf.bfloat16)  # [batch 1, n 1, n_embd 4]
    wte = tf.eye(4, dtype=tf.bfloat16)  # [n_vocab 4, n_embd 4]
    with tf.GradientTape() as tape:
        tape.watch(h)
        loss = tf.reduce_sum(fast.next_token_losses(h, wte, tf.constant([[0]])))
    exact = np.exp([6.0, 0, 0, 0]) / np.exp([6.0, 0, 0, 0]).sum() - np.eye(4)[0]
    np.testing.assert_allclose(loss, -np.log(exact[0] + 1), rtol=1e-4)  # 6.0074 - 6 in float32
    np.testing.assert_allclose(tf.cast(tape.gradient(loss, h), tf.float32)[0, 0], exact, rtol=0.004)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["norm", "gelu"])
def test_xla_fused_norm_and_gelu_are_the_models_in_float32_rounded_to_xs_dtype(name, dtype):
    """`fast.norm` and `fast.gelu`: model.norm's and model.gelu's values and gradients computed
    in float32, rounded to x's dtype (to float32's rounding; within one bfloat16 rounding, as
    XLA's tanh and TensorFlow's may round to either side), forward and backward each through
    XLA. The norm's gain and bias, float32 variables as in training, get float32 gradients."""
    rng = np.random.RandomState(0)
    x32 = tf.cast(tf.cast(rng.randn(2, 5, 8) * 2, dtype), tf.float32)  # values x's dtype holds exactly
    upstream32 = tf.cast(tf.cast(rng.randn(2, 5, 8), dtype), tf.float32)
    p = {"g": tf.Variable(rng.rand(8) + 0.5, dtype=tf.float32), "b": tf.Variable(rng.randn(8), dtype=tf.float32)}
    fused, plain = {"norm": (lambda x: fast.norm(x, p), lambda x: model.norm(x, p)),
                    "gelu": (fast.gelu, model.gelu)}[name]

    def value_and_gradients(f):
        @tf.function
        def run(x, upstream):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = f(x)
            return y, tape.gradient(y, [x, p["g"], p["b"]] if name == "norm" else [x], upstream)
        return run
    run = value_and_gradients(fused)
    y, grads = run(tf.cast(x32, dtype), tf.cast(upstream32, dtype))
    expected_y, expected_grads = value_and_gradients(plain)(x32, upstream32)
    assert y.dtype == dtype and grads[0].dtype == dtype and all(g.dtype == tf.float32 for g in grads[1:])
    for value, expected in zip([y, *grads], [expected_y, *expected_grads]):
        expected = tf.cast(tf.cast(expected, value.dtype), tf.float32)  # rounded as the fused one rounds
        rtol = 2 ** -7 if value.dtype == tf.bfloat16 else 1e-6  # a bfloat16 rounding is 2^-8 to 2^-7 of a value
        np.testing.assert_allclose(tf.cast(value, tf.float32), expected, rtol=rtol, atol=1e-6 * np.abs(expected).max())
    graph = run.get_concrete_function(tf.cast(x32, dtype), tf.cast(upstream32, dtype)).graph
    compiled = [op for op in graph.get_operations()
                if "_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile")]
    assert len(compiled) == 2  # the forward and the backward

def test_a_step_moves_the_weights_down_the_gradient(values):
    hparams, v = values
    batch = random_tokens(hparams.n_vocab, 2, 16)
    trainer = training.Trainer(v, hparams, optimizer="sgd", learning_rate=0.1)
    loss = trainer.step(batch[None])
    np.testing.assert_allclose(loss, training.Trainer(v, hparams).loss(batch), rtol=1e-6)  # the loss before the update
    grads = gradients(v, hparams, batch)
    for name, value in weights(trainer).items():
        np.testing.assert_allclose(value, v[name] - 0.1 * grads[name], rtol=1e-5, atol=1e-7, err_msg=name)


# --- Behaviour on the tiny model -------------------------------------------------------------

def test_accumulating_k_batches_of_b_is_one_batch_of_k_times_b(values):
    """With SGD, whose update is the gradient itself: Adam divides each gradient by its own
    size, which turns a rounding-level gradient's rounding into an update of learning-rate size."""
    hparams, v = values
    batch = random_tokens(hparams.n_vocab, 4, 16)
    whole = training.Trainer(v, hparams, optimizer="sgd", learning_rate=0.1)
    parts = training.Trainer(v, hparams, optimizer="sgd", learning_rate=0.1)
    for _ in range(2):
        np.testing.assert_allclose(whole.step(batch[None]), parts.step(batch.reshape(2, 2, 16)), rtol=1e-6)
    for name, value in weights(parts).items():
        np.testing.assert_allclose(value, weights(whole)[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_memory_saving_gradients_equal_the_plain_ones(values):
    hparams, v = values
    batch = random_tokens(hparams.n_vocab, 2, 16)
    plain, saving = gradients(v, hparams, batch), gradients(v, hparams, batch, memory_saving=True)
    for name, value in plain.items():
        np.testing.assert_allclose(saving[name], value, rtol=1e-5, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 0.05), ("float16", 0.01)])
def test_half_precision_gradients_stay_within_its_rounding(values, dtype, tolerance):
    """bfloat16 keeps 8 bits of mantissa (0.4% a rounding), float16 11 (0.05%): summed over
    a few dozen roundings, the gradient of each variable stays within a few percent (bfloat16)
    or under a percent (float16) of float32's, by norm."""
    hparams, v = values
    batch = random_tokens(hparams.n_vocab, 2, 16)
    exact, half = gradients(v, hparams, batch), gradients(v, hparams, batch, tf.as_dtype(dtype))
    for name, value in exact.items():
        assert np.linalg.norm(half[name] - value) <= tolerance * np.linalg.norm(value), name


@pytest.mark.parametrize("xla", [True, False], ids=["xla", "no-xla"])  # a CPU with bfloat16 instructions: no XLA
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_keeps_float32_weights_and_learns(values, dtype, xla):
    hparams, v = values
    batch = random_tokens(hparams.n_vocab, 2, 16)
    trainer = training.Trainer(v, hparams, dtype=dtype, learning_rate=1e-2, xla=xla)
    losses = [float(trainer.step(batch[None])) for _ in range(5)]
    assert all(variable.dtype == tf.float32 for variable in tf.nest.flatten(trainer.params))
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_copies_make_the_steps_of_converting_in_the_pass(values, monkeypatch, dtype):
    """The copies in the compute dtype that each update writes (`fast.weight_copies`) give the
    losses and weights of converting the float32 weights in every pass, exactly: one window a
    step, and two accumulated, whose gradients add up in float32 either way. The copies are the
    float32 weights, converted."""
    hparams, v = values
    batches = [random_tokens(hparams.n_vocab, 2, 16)[None], random_tokens(hparams.n_vocab, 4, 16).reshape(2, 2, 16)]
    trainers = [training.Trainer(v, hparams, dtype=dtype, learning_rate=1e-2)]
    with monkeypatch.context() as patched:
        patched.setattr(fast, "weight_copies", lambda params, dtype: params)
        trainers.append(training.Trainer(v, hparams, dtype=dtype, learning_rate=1e-2))
    copies, converting = trainers
    assert all(c.dtype == dtype for c in copies.computed_trainable if len(c.shape) > 1)
    assert all(c is w for c, w in zip(converting.computed_trainable, converting.trainable))
    for batch in batches:
        for _ in range(2):
            assert float(copies.step(batch)) == float(converting.step(batch))
    for name, value in weights(converting).items():
        np.testing.assert_array_equal(weights(copies)[name], value, err_msg=name)
    for copy, weight in zip(copies.computed_trainable, copies.trainable):
        np.testing.assert_array_equal(copy.numpy(), tf.cast(weight, copy.dtype).numpy(), err_msg=weight.name)


def test_only_transformer_layers_leaves_the_embeddings(values):
    hparams, v = values
    trainer = training.Trainer(v, hparams, only_train_transformer_layers=True, learning_rate=1e-2)
    trainer.step(random_tokens(hparams.n_vocab, 1, 16)[None])
    after = weights(trainer)
    for name in v:
        changed = not np.array_equal(after[name], v[name])
        assert changed == (name not in ("model/wte", "model/wpe")), name


def test_noise_is_drawn_from_the_seed_and_replaces_about_that_share(values):
    hparams, _ = values
    batch = tf.constant(random_tokens(hparams.n_vocab, 4, 256))
    a = training.add_noise(batch, 0.25, hparams.n_vocab, tf.constant([3, 1], tf.int64))
    b = training.add_noise(batch, 0.25, hparams.n_vocab, tf.constant([3, 1], tf.int64))
    c = training.add_noise(batch, 0.25, hparams.n_vocab, tf.constant([3, 2], tf.int64))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.2 < np.mean(a.numpy() != batch.numpy()) < 0.3


def test_sgd_has_no_momentum_and_adam_the_epsilon_of_tf1():
    sgd, adam = training.make_optimizer("sgd", 0.1, tf.float32), training.make_optimizer("adam", 0.1, tf.float32)
    assert sgd.momentum == 0 and adam.epsilon == 1e-8
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd"):
        training.make_optimizer("adagrad", 0.1, tf.float32)


@pytest.mark.parametrize("dtype, device, bfloat16_instructions, xla", [
    (tf.float32, "CPU", False, False),  # under 10% (bench/README.md)
    (tf.bfloat16, "CPU", False, True),
    (tf.bfloat16, "CPU", True, False),  # oneDNN's native kernels beat XLA's (bench/README.md)
    (tf.float16, "CPU", False, True),
    (tf.float16, "CPU", True, True),
    (tf.bfloat16, "GPU", False, False),
])
def test_xla_compiles_the_pass_only_where_it_was_measured_to_win(monkeypatch, dtype, device, bfloat16_instructions, xla):
    monkeypatch.setattr(fast, "has_bfloat16_instructions", lambda: bfloat16_instructions)
    assert fast.train_with_xla(dtype, device) == xla


def test_adams_kernel_updates_as_keras_adam_does_and_xla_as_the_plain_update(values, monkeypatch):
    """Adam on TensorFlow's ApplyAdam kernel (`fast.FusedAdam`, the default) moves the weights
    and the moments as Keras's own Adam does, the reference, and as the update compiled by XLA
    (xla_update) does, to float32's rounding: the same gradients three times. Its variables are
    Keras's Adam's, in the same order: a run saved with either resumes with the other. Whole SGD
    steps too, through XLA or not (Adam would turn the rounding of a gradient that is zero but for
    rounding, as the keys' bias has, into a step of learning-rate size)."""
    hparams, v = values
    rng = np.random.RandomState(0)
    for optimizer in ("adam", "sgd"):
        compiled, plain = (training.Trainer(v, hparams, optimizer=optimizer, learning_rate=1e-2, xla_update=x)
                           for x in (True, False))
        assert compiled.xla_update and not plain.xla_update
        if optimizer == "adam":
            with monkeypatch.context() as patch:
                patch.setattr(fast, "FusedAdam", keras.optimizers.Adam)
                reference = training.Trainer(v, hparams, learning_rate=1e-2)
            assert isinstance(plain.optimizer, fast.FusedAdam) and not isinstance(reference.optimizer, fast.FusedAdam)
            for _ in range(3):
                gradients = [tf.constant(rng.randn(*w.shape), tf.float32) for w in plain.trainable]
                compiled._update(gradients), plain._update(gradients), reference._update(gradients)
            moments = [[x.numpy() for x in trainer.optimizer.variables] for trainer in (reference, plain)]
            assert [x.shape for x in moments[0]] == [x.shape for x in moments[1]]
            for theirs, ours in zip(*moments):
                np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
            # The kernel makes 1 - beta_2 in float32, as TF1 did, Keras in double and then rounds it:
            # 1.3e-5 apart, so each step differs by ~1e-5 of its size, the learning rate's 1e-2.
            for name, value in weights(reference).items():
                np.testing.assert_allclose(weights(plain)[name], value, rtol=1e-5, atol=1e-6, err_msg=f"Keras's {name}")
        else:
            batch = random_tokens(hparams.n_vocab, 2, 16)[None]
            for _ in range(3):
                np.testing.assert_allclose(compiled.step(batch), plain.step(batch), rtol=1e-6)
        for name, value in weights(plain).items():
            np.testing.assert_allclose(weights(compiled)[name], value, rtol=1e-5, atol=1e-7, err_msg=f"{optimizer} {name}")
    assert not training.Trainer(v, hparams).xla_update
