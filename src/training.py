"""Fine-tuning GPT-2: the loss, and a training step over float32 weights kept in tf.Variables
in `model.model`'s layout, saved under OpenAI's names and shapes, on one device or many
(tf.distribute).

    trainer = Trainer(values, hparams)     # values: {checkpoint name: array}
    loss = trainer.step(windows)           # windows [accumulate, batch, T] int32
    trainer.params["h"][0]["attn"]["c_attn"]["w"]          # a tf.Variable [n_embd, 3 * n_embd]
    trainer.checkpoint_values()["model/h0/attn/c_attn/w"]  # its value [1, n_embd, 3 * n_embd]

The loss of a window of T tokens is the mean cross-entropy (nats) of its T - 1 next-token
predictions; a step's loss is the mean over all the windows of the step, on every replica.
Mixed precision computes in bfloat16 or float16 from the float32 weights, which the optimizer
updates (float16 with a dynamic loss scale, as Keras's LossScaleOptimizer keeps it), and of
which each update writes the copies in that dtype that the next pass reads (`fast.weight_copies`).
"""
import keras
import tensorflow as tf

import fast
import model

OPTIMIZERS = ("adam", "sgd")
FIXED_EMBEDDINGS = ("wte", "wpe")  # what --only_train_transformer_layers leaves as it is


def predictions_loss(logits, tokens):
    """The cross-entropies (nats) of predicting each token of tokens [batch, T] from the ones
    before it, given logits [batch, T, n_vocab] -> [batch, T - 1]: the reference that
    `window_losses` computes faster."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tokens[:, 1:], logits=logits[:, :-1])


def forward(params, hparams, X, memory_saving=False):
    """`model.model`'s logits [batch, seq, n_vocab] for X [batch, seq], without a cache."""
    return model.unembed(params, hidden_states(params, hparams, X, memory_saving))


def window_losses(params, hparams, inputs, targets, memory_saving=False):
    """The cross-entropies (nats) [batch, T - 1] of predicting each token of targets [batch, T]
    from the tokens of inputs [batch, T] before it (the same tokens, or with --noise):
    `predictions_loss(forward(params, hparams, inputs), targets)`, faster. The last position,
    which predicts nothing within the window, is left out before the output layer, not after it,
    and the output layer and the loss are one (`fast.next_token_losses`); the two uses of wte add
    their gradients as `fast.tied_embeddings` does."""
    embedding, output_layer = fast.tied_embeddings(params["wte"])
    h = hidden_states({**params, "wte": embedding}, hparams, inputs, memory_saving)[:, :-1]  # [batch, T - 1, n_embd]
    return fast.next_token_losses(h, output_layer, targets[:, 1:])


def hidden_states(params, hparams, X, memory_saving=False):
    """The final norm's output [batch, seq, n_embd] for X [batch, seq]. With memory_saving each
    block keeps only its input for the backward pass, which computes the block again
    (tf.recompute_grad): activations of one block in memory instead of all of them."""
    h = model.embed(params, X)  # [batch, seq, n_embd]
    for p in params["h"]:
        h = recomputed_block(h, p, hparams.n_head) if memory_saving else block(h, p, hparams.n_head)
    return fast.norm(h, params["ln_f"])


def block(x, p, n_head):
    """`model.block` without a cache, its norms and GELU each one XLA program forward and one
    backward (`fast.xla_fused`): x [batch, seq, n_embd] -> x. In half precision GELU computes in
    float32 and rounds once, where model.py's rounds at each op."""
    a, _ = model.attn(fast.norm(x, p["ln_1"]), p["attn"], None, n_head)
    x = x + a
    m = fast.gelu(model.conv1d(fast.norm(x, p["ln_2"]), p["mlp"]["c_fc"]))  # [batch, seq, 4 * n_embd]
    return x + model.conv1d(m, p["mlp"]["c_proj"])


def recomputed_block(h, p, n_head):
    """`block`'s output for h [batch, seq, n_embd], recomputed in the backward pass."""
    flat = [tf.convert_to_tensor(value) for value in tf.nest.flatten(p)]  # tensors: no variables inside

    def computed(h, *flat):
        return block(h, tf.nest.pack_sequence_as(p, flat), n_head)
    return tf.recompute_grad(computed)(h, *flat)


def add_noise(tokens, noise, n_vocab, seed):
    """tokens [..., T] with each replaced, with probability `noise`, by a uniformly drawn token:
    the input a model learns to read through typos from (nshepperd's --noise). seed: 2 ints."""
    replace_seed, token_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    replace = tf.random.stateless_uniform(tf.shape(tokens), replace_seed) < noise
    random = tf.random.stateless_uniform(tf.shape(tokens), token_seed, maxval=n_vocab, dtype=tf.int32)
    return tf.where(replace, random, tokens)


def make_optimizer(name, learning_rate, dtype):
    """Adam with the epsilon of TF1's AdamOptimizer that GPT-2 fine-tuning used, on its kernel
    (`fast.FusedAdam`), or plain SGD (no momentum); with a dynamic loss scale for float16, whose
    gradients would underflow."""
    if name == "adam":
        optimizer = fast.FusedAdam(learning_rate, epsilon=1e-8)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate)
    else:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}. Received: {name!r}")
    return keras.optimizers.LossScaleOptimizer(optimizer) if dtype == tf.float16 else optimizer


class Trainer:
    """The weights, the optimizer and a compiled training step.

    values: {checkpoint name: array in the checkpoint's shape}, the weights to start from.
    strategy: a tf.distribute strategy (default: the current one, a single device). A step
    takes windows [accumulate, batch, T] on each replica, that is `accumulate` micro-batches,
    whose gradients are summed before the one update: the same update as one batch of
    accumulate * batch windows (and, over replicas, of replicas * accumulate * batch).
    """

    def __init__(self, values, hparams, *, optimizer="adam", learning_rate=2e-5, dtype=tf.float32,
                 memory_saving=False, only_train_transformer_layers=False, noise=0.0, strategy=None, xla=None,
                 xla_update=False):
        self.hparams, self.dtype, self.memory_saving, self.noise = hparams, tf.as_dtype(dtype), memory_saving, noise
        self.xla = fast.train_with_xla(self.dtype) if xla is None else xla
        self.strategy = strategy or tf.distribute.get_strategy()
        self.xla_update = xla_update
        with self.strategy.scope():
            # Variables in `model.model`'s layout, so that a Sampler given them reads their values
            # at each call; refused where oneDNN is told weights never change.
            self.params = tf.nest.map_structure(tf.Variable, model.nest_params(values, hparams, tf.float32))
            fast.check_weights_can_change(self.params)
            fixed = [self.params[name] for name in FIXED_EMBEDDINGS] if only_train_transformer_layers else []
            self.trainable = [v for v in tf.nest.flatten(self.params) if all(v is not f for f in fixed)]
            # What the pass reads and differentiates: the weights, or copies that the update writes.
            self.computed = fast.weight_copies(self.params, self.dtype)
            read = {id(v): c for v, c in zip(tf.nest.flatten(self.params), tf.nest.flatten(self.computed))}
            self.computed_trainable = [read[id(v)] for v in self.trainable]
            self.optimizer = make_optimizer(optimizer, learning_rate, self.dtype)
            self.optimizer.build(self.trainable)
        self._step = tf.function(self._distributed_step)
        # The forward and backward pass, compiled by XLA where it wins (fast.train_with_xla); the
        # update only when asked (xla_update): Adam's kernel beats XLA's loops (fast.FusedAdam).
        self._compiled_gradients = tf.function(self._gradients, jit_compile=self.xla)
        self._update = tf.function(self._apply_gradients, jit_compile=True) if self.xla_update else self._apply_gradients
        self._loss = tf.function(self._mean_loss, input_signature=[tf.TensorSpec([None, None], tf.int32)])

    def checkpoint_values(self):
        """{checkpoint name: the weights' value in the checkpoint's shape}, for saving."""
        return model.checkpoint_values(self.params)

    def loss(self, tokens):
        """The mean next-token cross-entropy of tokens [batch, T] under the current weights."""
        return self._loss(tf.convert_to_tensor(tokens, tf.int32))

    def _mean_loss(self, tokens):
        return tf.reduce_mean(window_losses(model.cast_params(self.computed, self.dtype), self.hparams, tokens, tokens))

    def step(self, windows, seed=(0, 0)):
        """One update from windows [accumulate, replicas * batch, T] (replica r takes rows
        r * batch .. of each micro-batch); returns the step's loss. `seed` (two integers)
        draws the --noise, window by window, however the windows are spread over replicas."""
        windows = tf.convert_to_tensor(windows, tf.int32)
        inputs = windows if not self.noise else add_noise(windows, self.noise, self.hparams.n_vocab,
                                                         tf.constant(seed, tf.int64))
        predictions = tf.cast(tf.size(windows[..., 1:]), tf.float32)  # every replica's, for the mean
        replicas = self.strategy.num_replicas_in_sync

        def shard(context):  # [accumulate, batch, T] of the replica
            r, batch = context.replica_id_in_sync_group, windows.shape[1] // replicas
            return inputs[:, r * batch:(r + 1) * batch], windows[:, r * batch:(r + 1) * batch]
        if windows.shape[1] % replicas:
            raise ValueError(f"a step's {windows.shape[1]} windows do not split over {replicas} replicas")
        return self._step(self.strategy.experimental_distribute_values_from_function(shard), predictions)

    def _distributed_step(self, shards, predictions):
        losses = self.strategy.run(self._replica_step, args=(*shards, predictions))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def _replica_step(self, inputs, targets, predictions):
        """inputs, targets [accumulate, batch, T] of this replica; `predictions` in the step
        on all replicas. The gradients of the micro-batches add up; the optimizer sums them over
        the replicas (Keras's all-reduce) and updates the weights once."""
        total, gradients = self._compiled_gradients(inputs[0], targets[0], predictions)
        if inputs.shape[0] != 1:  # micro-batches' gradients add up in float32
            gradients = [tf.cast(g, tf.float32) for g in gradients]
        for i in tf.range(1, tf.shape(inputs)[0]):  # a loop in the graph: one micro-batch in memory at a time
            loss, more = self._compiled_gradients(inputs[i], targets[i], predictions)
            total, gradients = total + loss, [a + tf.cast(b, a.dtype) for a, b in zip(gradients, more)]
        # Every update waits for every gradient: started as soon as its own gradient is ready, the
        # updates of the last layers would hold their temporaries while the backward pass of the
        # first layers still holds their activations (bench_train.py's peak memory).
        with tf.control_dependencies(gradients):
            gradients = [tf.identity(g) for g in gradients]
        self._update(gradients)
        return total

    def _apply_gradients(self, gradients):
        """Updates the weights from their gradients (float32 or the copies' dtype), then the copies."""
        self.optimizer.apply_gradients(zip([tf.cast(g, tf.float32) for g in gradients], self.trainable))
        for variable, copy in zip(self.trainable, self.computed_trainable):
            if copy is not variable:
                copy.assign(tf.cast(variable, copy.dtype))

    def _gradients(self, inputs, targets, predictions):
        """(the loss's share of inputs, targets [batch, T], its gradients, as dense tensors)."""
        with tf.GradientTape() as tape:
            tape.watch(self.computed_trainable)
            params = model.cast_params(self.computed, self.dtype)  # copies are in self.dtype already
            loss = tf.reduce_sum(window_losses(params, self.hparams, inputs, targets, self.memory_saving)) / predictions
            scaled = self.optimizer.scale_loss(loss) if self.dtype == tf.float16 else loss
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(scaled, self.computed_trainable)]
