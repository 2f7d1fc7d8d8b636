"""The fast path for sampling: GPT-2 decoding into a key/value cache preallocated for the whole
sample, compiled once, with the choices that make it fast on the device it runs on.

It computes what `model.model` and `sample.next_token` compute, in another order: in float32,
`Sampler` gives the tokens of `sample.sample_plain` (tests/test_fast.py). How:

- The cache is one tensor [2, batch, heads, size, head_dim] per layer (where the Sampler
  halves tensor weights, `Choices.column_halves`, a list of two, one for each half of the
  heads), keys then values, for `size` positions: the sample's length rounded up to a multiple
  of 128, so that a few compiled shapes serve every length (without XLA,
  `Choices.growing_cache` grows it GROWTH positions at a time instead). It holds the weights'
  dtype (float32 at batch 1 with `Choices.float32_attention`). `decode` fills it, for the
  prompt and for each new token alike. It writes with `tf.tensor_scatter_nd_update`, which
  returns a new tensor: XLA writes it in place, plain TensorFlow copies the cache. Without
  XLA, `Choices.inplace_cache` writes with InplaceUpdate into a cache `Sampler.generate` owns
  (`own_cache`), the same result either way.
- The decode loop is one `tf.while_loop` in one `tf.function`, traced once for each batch size,
  whose shape arithmetic TensorFlow then folds (bench_generate.py --alternate any_batch).
- `Choices` holds what depends on the device and dtype; each says what it wins and which
  bench command shows it (figures: bench/README.md).

Training's speed lives here too: whether its pass goes through XLA (`train_with_xla`), Adam's
update (`FusedAdam`), the output layer and loss in one (`next_token_losses`), wte's two
gradients (`tied_embeddings`), and the norms and GELU each one XLA program (`xla_fused`).

Weights must not change under a compiled Sampler's feet in a way the kernels cannot see: see
`check_weights_can_change`.
"""
import dataclasses
import functools
import os
import re
import time

import keras
import numpy as np
import tensorflow as tf

import logs
import model
import sample
import saving

FROZEN_WEIGHTS = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"


@dataclasses.dataclass(frozen=True)
class Choices:
    """How the fast path runs: see `choices_for`. Each choice says what it wins; the figures
    are in bench/README.md."""
    # Compile the decode loop with XLA: it fuses a step's hundreds of small ops, and on a CPU
    # without bfloat16 instructions its half-precision matmuls beat oneDNN's emulated ones
    # (bench_generate.py [--dtype D] --jit false).
    xla: bool = False
    # Without XLA: each matmul, its bias and GELU as one oneDNN kernel (`conv1d`), which is also
    # the only kind whose weights oneDNN can keep converted (frozen_weights)
    # (bench_generate.py --dtype bfloat16 --alternate fused_matmuls).
    fused_matmuls: bool = False
    # Without XLA: write each step's keys and values into the cache in place (`write_cache`),
    # not into a copy of the whole cache (bench_generate.py --dtype bfloat16 --alternate inplace_cache).
    inplace_cache: bool = False
    # The scripts, whose weights never change, let oneDNN convert each weight matrix to its own
    # layout once rather than at every call (`freeze_weights`; bench_generate.py --dtype bfloat16
    # with and without TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1). Only the decode loop's kernels keep
    # such a copy: the prompt's pass takes `prompt_choices`.
    frozen_weights: bool = False
    # Without XLA: each matmul as `tf.einsum`, which oneDNN neither fuses nor keeps converted
    # weights for: the prompt's pass where fused kernels keep theirs (`prompt_choices`).
    einsum_matmuls: bool = False
    # At batch 1, where a step's attention is a few hundred multiply-adds a head: the cache in
    # float32 and that attention in float32, its products on TensorFlow's own BatchMatMulV3, not
    # oneDNN's bfloat16 kernels, which cost more a call than the work (`attention`,
    # `float32_attention`; bench_generate.py --dtype bfloat16 --alternate float32_attention).
    # Larger batches keep the cache in the weights' dtype.
    float32_attention: bool = False
    # In a process that samples up to SINGLE_THREADED_ROWS rows at a time (the scripts): each op
    # on one thread (TensorFlow's intra-op threads 1, `set_threads`), the two cores taking ops in
    # turn, and with `column_halves` a matrix's two halves at once (with `sampling_row_halves`,
    # the sampling step's two halves of the rows). A matmul gains less from a
    # second thread of its own than waking it costs: 1.10x at batch 1 with whole matrices
    # (bench_generate.py --dtype bfloat16 --batch_size 1, and with --plain single_threaded_ops,
    # processes in turn); at batch 8 it loses with whole matrices and wins with halves.
    single_threaded_ops: bool = False
    # Without XLA, which compiles anew for each cache size: a cache that grows by
    # `GROWTH` positions as the sample does, not one sized for the whole sample at once, so that a
    # step's attention reads fewer positions not yet written (`Sampler.generate`;
    # bench_generate.py --dtype bfloat16 --batch_size 8 --alternate growing_cache).
    growing_cache: bool = False
    # With one thread an op: each weight matrix in two halves, two ops that the two cores run
    # at once, as llama.cpp's threads split a matrix: on a Zen 5 one core reads a matrix at
    # ~40 GB/s, both at 55-65; on an AMX Xeon one core streams at 15, both at 26
    # (`column_halves`; bench_generate.py --dtype bfloat16 --batch_size B --alternate
    # column_halves: 1.13 and 1.51 at batch 1). c_attn's halves are each the q, k and v of half
    # the heads, so that each half's attention runs on its core too, with a cache of its own, and
    # no hand-over between the cores comes before it (bench/bench_against.py against 93eda39,
    # whose c_attn was in plain halves); c_fc's are halves of its columns. Each c_proj is in the
    # rows that meet a half's output, so that each half of a sublayer goes through both its
    # matrices on its core and one addition joins the two, where concatenations joined them
    # before each matrix (`cut_layer`): on an AMX Xeon 1.05-1.06x at either batch, ~1.04 net of
    # the method's own 1.01-1.02 (bench_against.py 993bc09 --batch_size B), about 1.01 on a Zen 4
    # (bench/README.md, its third session of 2026-12-07). In half precision the two products are
    # rounded before they are added, so the logits are the whole matrices' within that rounding,
    # not to the bit, and a near-tie can draw another token (tests/test_dtypes.py; in float32
    # the tokens are model.py's). The halves are copies, which the Sampler makes of tensor
    # weights (Variables change).
    column_halves: bool = False
    # Without XLA: each weight of every layer as one tensor, [n_layer, ...] (`stack_layers`),
    # which the decode loop unstacks at each step: its while loop takes two dozen weight tensors
    # rather than twenty a layer, and TensorFlow's control flow ops pass each of its tensors on at
    # each step, ~1.2 microseconds a tensor: 0.98-1.03x at batch 1 (median 1.01 of five runs),
    # 1.01-1.02 at batch 8 on a Zen 4 with huge pages (bench_generate.py --dtype bfloat16
    # --alternate stacked_layers).
    stacked_layers: bool = False
    # With one thread an op, at 2 to SINGLE_THREADED_ROWS rows: the sampling step (temperature,
    # filters, draw) on each half of the rows apart, two chains of ops that the two cores run at once; each row's
    # draw is its own, so the tokens are the same (`next_token_in_row_halves`; bench_generate.py
    # --dtype bfloat16 --batch_size 8 --alternate sampling_row_halves).
    sampling_row_halves: bool = False


# oneDNN's kernels, on the CPUs where they were measured to beat XLA (`choices_for`).
ONEDNN = Choices(fused_matmuls=True, inplace_cache=True, frozen_weights=True, float32_attention=True,
                 single_threaded_ops=True, growing_cache=True, column_halves=True, sampling_row_halves=True,
                 stacked_layers=True)
# XLA alone: the weights as loaded and nothing more, where ONEDNN holds two copies of them and
# more at its peak (its halves and stacks, and oneDNN's converted copy of frozen weights;
# cli.sampling_memory, cli.sampling_choices).
LEAN = Choices(xla=True)


# The fewest rows at a time for which float32 takes oneDNN's choices on a CPU with bfloat16
# instructions (`choices_for`): against XLA, 124M on a Zen 4 made 1.03-1.07x the tokens at 2 rows,
# 1.29-1.32x at 4 and 1.5-2.1x at 8, and 1558M 1.10x at 2, for two copies of the weights and more
# at the peak rather than one (bench_generate.py --dtype float32 --batch_size B [--jit true]).
FLOAT32_ONEDNN_ROWS = 4


def choices_for(dtype=tf.float32, device_type=None, rows=None):
    """The fast path's choices for weights in `dtype` on `device_type` ('CPU' or 'GPU'; by
    default a GPU when TensorFlow sees one), sampling `rows` rows at a time where that is known
    (the scripts). On a CPU with bfloat16 instructions (AVX512_BF16, AMX), bfloat16 takes
    oneDNN's kernels, because XLA's bfloat16 matmuls gain nothing from the halved bytes
    (bench_matmul.py --dtype bfloat16 [--jit]); so does float32 at FLOAT32_ONEDNN_ROWS rows or
    more, because XLA's float32 matmuls of 8 rows read half the weights a second that oneDNN's
    frozen ones do (bench_matmul.py --dtype float32 --rows 8 [--jit]). At fewer rows, or rows
    unknown, float32 keeps XLA: about as fast there, in one copy of the weights where oneDNN's
    choices hold two and more at their peak (cli.sampling_memory). Measured on those CPUs only:
    elsewhere, and for float16, XLA."""
    if (device_type or default_device_type()) != "CPU":
        return Choices()  # nothing measured on a GPU yet: TensorFlow's defaults
    dtype = tf.as_dtype(dtype)
    many = rows is not None and rows >= FLOAT32_ONEDNN_ROWS
    if has_bfloat16_instructions() and (dtype == tf.bfloat16 or dtype == tf.float32 and many):
        return ONEDNN
    return LEAN


def prompt_choices(choices):
    """The choices of the prompt's pass (`Sampler._prefill`): the decode loop's, but where fused
    kernels keep their weights converted (TF_ONEDNN_ASSUME_FROZEN_WEIGHTS set, `freeze_weights`)
    its matmuls on `Choices.einsum_matmuls`, so that only the decode loop's kernels, which run at
    every step, keep a converted copy of the weights: 1558M in bfloat16 on an AMX CPU then peaks
    at float32's memory, for a prompt's pass that converts the weights at each call
    (bench_generate.py --dtype bfloat16 [--model_name 1558M] with and without --plain
    prompt_choices: peak_memory, prefill)."""
    if not (choices.fused_matmuls and weights_frozen()):
        return choices
    return dataclasses.replace(choices, fused_matmuls=False, einsum_matmuls=True)


# The CPU flags (as Linux names them) of instructions that multiply bfloat16 natively.
BFLOAT16_FLAGS = {"avx512_bf16", "amx_bf16"}


def has_bfloat16_instructions():
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX)."""
    return bool(BFLOAT16_FLAGS & cpu_flags())


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's flags as Linux lists them; none where it does not say."""
    try:
        with open(cpuinfo) as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def train_with_xla(dtype, device_type=None):
    """Whether training's forward and backward pass go through XLA: only in half precision on a
    CPU where sampling takes XLA too, where XLA's matmuls beat oneDNN's emulated ones
    (bench_train.py --dtype bfloat16 --xla true/false); on a CPU with bfloat16 instructions,
    bfloat16 trains on oneDNN's native kernels, faster than XLA there (the same command). In float32
    on a CPU it does not win 10% (bench_train.py --xla true/false), and it weakens
    --memory_saving_gradients, whose recomputation XLA may merge back into the forward pass; on a
    GPU nothing is measured yet: TensorFlow's default."""
    return tf.as_dtype(dtype) != tf.float32 and choices_for(dtype, device_type).xla


class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam, each variable's update one pass of TensorFlow's ApplyAdam kernel (TF1's
    AdamOptimizer's) over the weight, its two moments and its gradient. The same arithmetic, but
    for 1 - beta_2, made in float32 as TF1 made it. Keras's own update makes a dozen passes, and
    XLA's loops of them (the update as one `tf.function(jit_compile=True)`) are slower than the
    kernel: training 124M at 1 x 256 on an AMX CPU, 1.18x the steps in bfloat16 and 1.13x in
    float32 against Keras's Adam through XLA (bench_train.py --dtype D --alternate adam). Its
    variables are Keras's, in the same order: a run saved with either resumes with the other."""

    def update_step(self, gradient, variable, learning_rate):
        dtype, index = variable.dtype, self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=beta_1 ** step, beta2_power=beta_2 ** step, lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def weight_copies(params, dtype):
    """What training's pass reads for the float32 weights `params` (tf.Variables): in half
    precision, a copy of each in `dtype` (a tf.Variable the update writes, `Trainer`), so that the
    weights are converted once an update, within it, and not at every pass, and the gradients
    come back in `dtype`, converted within the update too; the norms' gains and biases, which
    compute in float32, and float32 training read the weights themselves. Training 124M at
    1 x 256 in bfloat16 on an AVX512_BF16 CPU: bench_train.py --dtype bfloat16 --alternate copies.
    Under a tf.distribute strategy each replica's copies are the first replica's."""
    def copy(variable, value):
        if value.dtype == variable.dtype:
            return variable
        return tf.Variable(value, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    return tf.nest.map_structure(copy, params, model.cast_params(params, dtype))


@tf.custom_gradient
def tied_embeddings(wte):
    """wte [n_vocab, n_embd] twice, (for the embedding, for the output layer), whose gradients
    add up as the embedding's rows, one a token read, added into the output layer's dense
    gradient. TensorFlow would make the embedding's gradient dense, a pass over [n_vocab, n_embd],
    then add the two, another pass, which in bfloat16 its own kernels make element by element.
    Training 124M at 1 x 256 on an AMX CPU: 1.077x the steps in bfloat16, 1.041x in float32
    (bench_train.py --dtype D --alternate tied)."""
    def gradient(embedding, output):  # tf.IndexedSlices of the rows read, dense [n_vocab, n_embd]
        if not isinstance(embedding, tf.IndexedSlices):
            return embedding + output
        return tf.tensor_scatter_nd_add(output, embedding.indices[:, None], embedding.values)
    return (tf.identity(wte), tf.identity(wte)), gradient


def next_token_losses(h, wte, targets):
    """The cross-entropies (nats, float32) of predicting targets [batch, n] from the final hidden
    states h [batch, n, n_embd] through the output layer wte [n_vocab, n_embd] (h's dtype):
    what `model.unembed` and a softmax cross-entropy give, with a gradient of its own. Its
    gradient of the logits is the softmax less one at each target, in h's dtype straight from
    oneDNN's softmax, where TensorFlow's would make it in float32 and then convert it, a pass over
    [batch * n, n_vocab] of its own; the target's entry, p - 1, is made in float32, where it would
    cancel in bfloat16. Training 124M at 1 x 256 on an AVX512_BF16 CPU: 1.07x the steps in
    float32, 1.04-1.11x in bfloat16 (bench_train.py --dtype D --alternate head; bench/README.md)."""
    batch, n = tf.shape(h)[0], tf.shape(h)[1]
    flat_h = tf.reshape(h, [batch * n, -1])  # [rows, n_embd]
    flat_targets = tf.reshape(tf.cast(targets, tf.int32), [-1])  # [rows]

    @tf.custom_gradient
    def losses(flat_h, wte):
        logits = tf.matmul(flat_h, wte, transpose_b=True)  # [rows, n_vocab]
        exact = tf.cast(logits, tf.float32)
        log_total = tf.reduce_logsumexp(exact, axis=-1)  # [rows]
        target_logits = tf.gather(exact, flat_targets, batch_dims=1)  # [rows]

        def gradient(upstream):  # [rows]
            targets_at = tf.stack([tf.range(batch * n), flat_targets], axis=1)  # [rows, 2]
            target_p = tf.exp(target_logits - log_total)
            d_logits = tf.tensor_scatter_nd_update(tf.nn.softmax(logits), targets_at,
                                                   tf.cast(target_p - 1, logits.dtype))  # [rows, n_vocab]
            scale = tf.cast(upstream, flat_h.dtype)[:, None]  # [rows, 1]: on n_embd columns, not n_vocab
            return tf.matmul(d_logits, wte) * scale, tf.matmul(d_logits, flat_h * scale, transpose_a=True)
        return log_total - target_logits, gradient
    return tf.reshape(losses(flat_h, wte), [batch, n])


def xla_fused(f):
    """f(x, *rest) with x converted to float32 (rest as given), the result given back in x's
    dtype, its forward and its backward each one XLA program: XLA fuses the elementwise ops into
    a few loops over the tensor, where TensorFlow's kernels make a pass an op (and in bfloat16
    convert each element at each op). The backward computes f again from its inputs, which are
    all the two passes keep between them (inside a pass XLA compiles whole, `train_with_xla`,
    XLA may merge the two). For training's norms and GELU (`norm`, `gelu`), on any device: the
    matmuls stay on oneDNN, whose AMX and AVX512_BF16 kernels XLA's CPU backend does not use.
    Training 124M at 1 x 256 on an AMX CPU: 1.073x the steps in bfloat16, 1.030x in float32
    (bench_train.py --dtype D --alternate xla_fused); not measured on a GPU yet. Each new shape
    is compiled once (a few small programs)."""
    def in_float32(x, *rest):
        return tf.cast(f(tf.cast(x, tf.float32), *rest), x.dtype)
    forward = tf.function(in_float32, jit_compile=True, autograph=False, reduce_retracing=True)

    @functools.partial(tf.function, jit_compile=True, autograph=False, reduce_retracing=True)
    def backward(upstream, *args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            y = in_float32(*args)
        return tape.gradient(y, args, upstream)

    @tf.custom_gradient
    def fused(*args):
        return forward(*args), lambda upstream: backward(upstream, *args)
    return fused


gelu = xla_fused(model.gelu)
_norm = xla_fused(lambda x, g, b: model.norm(x, {"g": g, "b": b}))


def norm(x, p):
    """`model.norm` of x [..., n] with p's gain and bias, as `xla_fused` makes it."""
    return _norm(x, p["g"], p["b"])


def default_device_type():
    """'GPU' where TensorFlow sees one, else 'CPU': where its ops run by default. It asks for
    the physical devices, which leaves TensorFlow's runtime unstarted (`set_threads`)."""
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def freeze_weights(choices):
    """For a process that samples with `choices` and whose weights never change (the sampling
    scripts), before its first matmul: where they take `frozen_weights`, sets
    TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1, unless the environment sets it already. Weights that can
    change are then refused (`check_weights_can_change`)."""
    if choices.frozen_weights:
        os.environ.setdefault(FROZEN_WEIGHTS, "1")


# The most rows a process may sample at a time for `Choices.single_threaded_ops`: measured at 1
# and 8 (bench/README.md); larger batches keep TensorFlow's threads.
SINGLE_THREADED_ROWS = 8


def set_threads(choices, batch_size):
    """For a process that samples `batch_size` rows at a time with `choices` (the scripts),
    before TensorFlow's first op: where they take `single_threaded_ops` and batch_size is at most
    SINGLE_THREADED_ROWS, each op runs on one thread, unless TF_NUM_INTRAOP_THREADS says
    otherwise. A process whose runtime has started keeps its threads."""
    if (batch_size <= SINGLE_THREADED_ROWS and choices.single_threaded_ops
            and "TF_NUM_INTRAOP_THREADS" not in os.environ):
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
        except RuntimeError:  # "cannot be modified after initialization"
            pass


def weights_frozen():
    """Whether this process lets oneDNN keep fused kernels' weights converted (`freeze_weights`):
    TF_ONEDNN_ASSUME_FROZEN_WEIGHTS as TensorFlow reads it, 1 or true in any case
    (`cli.check_settings` refuses what it cannot read)."""
    return os.environ.get(FROZEN_WEIGHTS, "0").lower() in ("1", "true")


def check_weights_can_change(params):
    """Refuses tf.Variable weights while TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is set.

    With it, oneDNN converts the weight matrix of each fused matmul kernel once and keeps the
    result for every later call of that kernel: a graph that reads variables would go on
    computing with their old values once they change. The scripts set it where it wins
    (`freeze_weights`); training and serving, whose weights are variables, never do. Weights
    given as tensors cannot change: a new set of weights makes a new Sampler, with kernels of
    its own.
    """
    if weights_frozen() and any(isinstance(value, tf.Variable) for value in tf.nest.flatten(params)):
        raise ValueError(f"the weights are tf.Variables, whose values can change, while {FROZEN_WEIGHTS} is set, "
                         "which would keep computing with their first values: unset it, or pass tensors")


# load_params reads this many bytes of float32 weights at most with one RestoreV2 op.
READ_BYTES = 256 * 2 ** 20


def load_params(prefix, hparams, dtype=tf.float32, choices=None):
    """`model.load_params`, reading the variables with a few RestoreV2 ops rather than one op
    each (bench_generate.py --alternate load_params), and casting what one read before the next:
    in half precision the whole model is never held in float32 (bench_generate.py's peak_memory).
    With `choices`, the weights come laid out as a Sampler with those choices keeps them
    (`sampling_params`), each layer's matrices cut by `cut_layer` as they are read, so that
    the whole matrices are never held beside the blocks (1558M's peak in float32 on oneDNN's
    choices: 18.9 GB before, 14.6-14.9 so; bench_generate.py --model_name 1558M --dtype float32
    --batch_size 4; cli.sampling_memory)."""
    stored = model.checkpoint_reader(prefix, hparams).get_variable_to_dtype_map()  # checks names and shapes first
    cut = choices is not None and choices.column_halves
    params = None
    for names in read_groups(model.checkpoint_shapes(hparams), hparams.n_layer, READ_BYTES):
        try:
            values = saving.read_tensors(prefix, {name: stored[name] for name in names})  # float32, or as saved
        except tf.errors.OpError as e:
            raise model.checkpoint_error(prefix, e) from None
        check_finite(prefix, values)
        nested = model.nest_params(values, hparams, dtype)  # whole layers: a layer's dict is full or empty
        del values
        if cut:
            nested["h"] = [cut_layer(layer, hparams.n_head) if layer else layer for layer in nested["h"]]
        if params is None:
            params = nested
        else:
            params.update({key: value for key, value in nested.items() if key != "h"})
            params["h"] = [old or new for old, new in zip(params["h"], nested["h"])]
        del nested  # and its list of layers: stack_layers releases each once params alone holds it
    if choices is not None and choices.stacked_layers:
        params["h"] = stack_layers(params.pop("h"))  # ours alone: released as they are stacked
    return params


def check_finite(prefix, values):
    """ValueError naming the first of `values` {name: tensor} that holds NaN or infinity, which
    make every logit NaN: sampled, those drew no token (or token 0 without a word), and scores
    were NaN. One pass over the weights as they are read: ~15% of 124M's and 355M's load."""
    for name, value in values.items():
        if not bool(tf.reduce_all(tf.math.is_finite(value))):
            raise ValueError(f"{prefix}: {name} holds NaN or infinity: the checkpoint is damaged, or was saved by a "
                             "fine-tuning run that diverged; download or convert it again, or use an earlier save")


def read_groups(shapes, n_layer, limit):
    """The checkpoint's names in groups of whole layers (and the rest: wte, wpe, ln_f), each
    under `limit` bytes in float32 where a layer allows."""
    def size(names):
        return sum(4 * int(np.prod(shapes[name])) for name in names)
    layers = [[name for name in shapes if not re.match(r"model/h\d+/", name)]]
    layers += [[name for name in shapes if name.startswith(f"model/h{i}/")] for i in range(n_layer)]
    groups = [[]]
    for layer in layers:
        if groups[-1] and size(groups[-1] + layer) > limit:
            groups.append([])
        groups[-1] += layer
    return groups


# --- The model, decoding into the cache -----------------------------------------------------

def empty_cache(hparams, batch_size, size, dtype, groups=None):
    """A cache for `size` positions: one [2, batch, heads, size, head_dim] per layer, or with
    `groups` (`head_groups`) a list of them a layer, one for each group of heads. The layers
    share their tensors (`own_cache`)."""
    tensors = [tf.zeros([2, batch_size, heads, size, hparams.head_dim], dtype) for heads in groups or [hparams.n_head]]
    return [list(tensors) if groups else tensors[0] for _ in range(hparams.n_layer)]


def cache_dtype_for(dtype, batch_size, choices):
    """The cache's dtype for `batch_size` rows and weights in `dtype`: theirs, or float32 at
    batch 1 with `Choices.float32_attention`."""
    return tf.float32 if choices.float32_attention and batch_size == 1 else tf.as_dtype(dtype)


def cache_spec(hparams, batch_size, dtype, groups=None):
    """The TensorSpec of a cache of any size (`empty_cache`), for `tf.function` signatures."""
    layer = lambda heads: tf.TensorSpec([2, batch_size, heads, None, hparams.head_dim], dtype)
    return [[layer(heads) for heads in groups] if groups else layer(hparams.n_head) for _ in range(hparams.n_layer)]


def cache_tensor(cache):
    """One tensor of a cache, whose batch size, size (axis 3) and dtype are the whole cache's."""
    return tf.nest.flatten(cache)[0]


def cache_rows(cache, positions):
    """The rows of cache [2, batch, heads, size, head_dim], seen as [2 * batch * heads * size,
    head_dim], that the keys and values of positions [seq] take, in the order c_attn's columns
    hold them (`write_cache`): [batch * seq * 2 * heads]. Every layer's cache of that shape takes
    the same rows: `decode` finds them once a pass, not once a layer. With `split_heads` and
    `attention`'s one cast, a third fewer ops a step without XLA (bench_against.py ac070aa)."""
    shape = tf.shape(cache)
    batch, heads, size = shape[1], cache.shape[2], shape[3]
    along = lambda t, axis: tf.reshape(t, [-1 if i == axis else 1 for i in range(4)])  # t on one axis of 4
    # [batch, seq, 2, heads]: (key or value kv, row b, head h, position p) is row ((kv * batch + b) * heads + h) * size + p
    kv_b_h = (along(tf.range(2), 2) * batch + along(tf.range(batch), 0)) * heads + along(tf.range(heads), 3)
    rows = kv_b_h * size + along(positions, 1)
    return tf.reshape(rows, [-1])


def write_cache(cache, rows, kv, inplace=False):
    """cache [2, batch, heads, size, head_dim] with kv [batch, seq, 2 * heads * head_dim], each
    position's keys then values as c_attn's columns hold them, written at `cache_rows`: a new
    tensor (see the module's docstring), or with `inplace` the given cache's own memory written
    by InplaceUpdate, for a cache nothing else reads (`own_cache`)."""
    head_dim = cache.shape[-1]
    flat = tf.reshape(cache, [-1, head_dim])  # [2 * batch * heads * size, head_dim]
    values = tf.reshape(kv, [-1, head_dim])  # [batch * seq * 2 * heads, head_dim]
    if inplace:
        written = tf.raw_ops.InplaceUpdate(x=flat, i=rows, v=values)
    else:
        written = tf.tensor_scatter_nd_update(flat, rows[:, None], values)
    return tf.reshape(written, shape_of(cache))


def shape_of(t):
    """t's shape, as a list where at most one axis is unknown (a reshape's -1), else as a tensor:
    no Shape op in a graph that knows the rest."""
    shape = t.shape.as_list()
    return tf.shape(t) if shape.count(None) > 1 else [-1 if n is None else n for n in shape]


def own_cache(cache, choices):
    """The cache copied where `Choices.inplace_cache` will write into it: InplaceUpdate is
    documented to return its input updated, and TensorFlow runs it in the input's memory, which
    other tensors may share (the layers of `empty_cache` share theirs). Writing into copies that
    nothing else reads gives the same result either way. `Sampler.generate` copies once a call and
    hands each compiled call the cache the previous one returned, never read again."""
    return tf.nest.map_structure(lambda t: tf.raw_ops.DeepCopy(x=t), cache) if choices.inplace_cache else cache


def conv1d(x, p, choices, gelu=False):
    """`model.conv1d`, then `model.gelu` with `gelu`: [batch, seq, nx] -> [batch, seq, nf].
    With `Choices.fused_matmuls`, as the ops oneDNN fuses into one kernel: MatMul, BiasAdd and
    TensorFlow's GELU (the same tanh approximation); with `Choices.einsum_matmuls`, the matmul as
    an einsum, which oneDNN keeps no converted weights for. p may be a list of column blocks
    (one head's attn c_proj in `cut_layer`), each computed alone, their outputs side by side; row
    blocks, whose products add up, are `block`'s and `mlp`'s to add."""
    if isinstance(p, list):
        return tf.concat([conv1d(x, block, choices, gelu) for block in p], axis=-1)
    if choices.einsum_matmuls:
        y = tf.einsum("bsi,io->bso", x, p["w"]) + p["b"]  # [batch, seq, nf]
        return tf.nn.gelu(y, approximate=True) if gelu else y
    if not choices.fused_matmuls:
        y = model.conv1d(x, p)
        return model.gelu(y) if gelu else y
    *start, nx = tf.unstack(tf.shape(x))
    y = tf.nn.bias_add(tf.matmul(tf.reshape(x, [-1, nx]), p["w"]), p["b"])  # [batch * seq, nf]
    if gelu:
        y = tf.nn.gelu(y, approximate=True)
    return tf.reshape(y, start + [p["w"].shape[-1]])  # [batch, seq, nf]


def attend(q, k, v, mask):
    """`model.multihead_attn` over the whole cache: q [batch, heads, seq, head_dim], k, v
    [batch, heads, size, head_dim] in q's dtype, mask [seq, size] True where a query may see a
    key -> q's shape and dtype."""
    w = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) * tf.math.rsqrt(float(v.shape[-1]))
    w = tf.nn.softmax(tf.where(mask, w, -1e9), axis=-1)  # [batch, heads, seq, size]
    return tf.matmul(tf.cast(w, v.dtype), v)  # [batch, heads, seq, head_dim]


def float32_attention(q, k, v, mask):
    """`attend` for one query in float32: its two products on TensorFlow's own BatchMatMulV3,
    which oneDNN does not take over, and tf.nn.softmax, one oneDNN kernel where it was the five
    ops of its formula before (1.02-1.03 on a Zen 4: bench_against.py 67a6edb --batch_size 1).
    q [batch, heads, 1, head_dim]."""
    w = tf.raw_ops.BatchMatMulV3(x=q, y=k, adj_y=True, Tout=tf.float32) * tf.math.rsqrt(float(v.shape[-1]))
    w = tf.nn.softmax(tf.where(mask, w, -1e9))  # [batch, heads, 1, size]
    return tf.raw_ops.BatchMatMulV3(x=w, y=v, Tout=tf.float32)


@functools.partial(tf.function, autograph=False)  # one trace serves every layer: start-up (bench_startup.py)
def block(x, p, cache, rows, mask, n_head, choices):
    """`model.block` writing its keys and values into the cache: x [batch, seq, n_embd],
    cache [2, batch, heads, size, head_dim], rows {heads: `cache_rows` of a cache of that many}
    -> (x, cache). Where c_attn is in head halves (`cut_layer`), each group of heads attends on
    its own, with its own cache (a list), and goes on through its rows of c_proj; the groups'
    outputs are added."""
    h = model.norm(x, p["ln_1"])
    if isinstance(p["attn"]["c_attn"], list):
        assert isinstance(cache, list), "c_attn in head halves takes a cache in groups of heads (empty_cache)"
        outputs, new_cache = [], []
        for c_attn, c_proj, part_cache, heads in zip(p["attn"]["c_attn"], p["attn"]["c_proj"], cache,
                                                     head_groups(n_head)):
            a, part_cache = attention(h, c_attn, part_cache, rows[heads], heads, mask, choices)
            outputs.append(conv1d(merge_heads(a), c_proj, choices))  # the group's rows of c_proj: [batch, seq, n_embd]
            new_cache.append(part_cache)
        x, cache = x + tf.add_n(outputs), new_cache
    else:
        assert not isinstance(cache, list), "a cache in groups of heads takes c_attn in head halves (column_halves)"
        a, cache = attention(h, p["attn"]["c_attn"], cache, rows[n_head], n_head, mask, choices)
        x = x + conv1d(merge_heads(a), p["attn"]["c_proj"], choices)  # merged: [batch, seq, n_embd]
    return x + mlp(model.norm(x, p["ln_2"]), p["mlp"], choices), cache


def mlp(h, p, choices):
    """`model.mlp` of normalized h [batch, seq, n_embd]; where c_fc is in column halves
    (`cut_layer`), each half through GELU and its rows of c_proj on its own, the two added."""
    if isinstance(p["c_fc"], list):
        return tf.add_n([conv1d(conv1d(h, c_fc, choices, gelu=True), c_proj, choices)
                         for c_fc, c_proj in zip(p["c_fc"], p["c_proj"])])  # [batch, seq, n_embd]
    return conv1d(conv1d(h, p["c_fc"], choices, gelu=True), p["c_proj"], choices)


def attention(h, p, cache, rows, n_head, mask, choices):
    """The attention of normalized h [batch, seq, n_embd] through c_attn's p, the q, k and v
    columns of n_head heads, whose cache is [2, batch, n_head, size, head_dim] and takes `rows`
    (`cache_rows`) -> (a [batch, n_head, seq, head_dim] in h's dtype, the cache with h's keys and
    values). In the cache's dtype: one query in float32 under half-precision weights takes
    `float32_attention` (`Choices.float32_attention`)."""
    c = tf.cast(conv1d(h, p, choices), cache.dtype)  # [batch, seq, 3 * n_head * head_dim]: q, k, v
    q, kv = tf.split(c, [c.shape[-1] // 3, -1], axis=-1)  # [batch, seq, n_head * head_dim], the rest
    cache = write_cache(cache, rows, kv, choices.inplace_cache)
    k, v = tf.unstack(cache)  # each [batch, n_head, size, head_dim]
    one_query_in_float32 = cache.dtype != h.dtype and h.shape[1] == 1
    a = (float32_attention if one_query_in_float32 else attend)(split_heads(q, n_head), k, v, mask)
    return tf.cast(a, h.dtype), cache


def split_heads(x, n_head):
    """`model.split_heads`, [batch, seq, n_embd] -> [batch, heads, seq, head_dim]: for one
    position a reshape alone, its transpose moving an axis of one, which moves no element."""
    if x.shape[1] == 1:
        return tf.reshape(x, [-1, n_head, 1, x.shape[-1] // n_head])
    return model.split_heads(x, n_head)


def merge_heads(x):
    """`model.merge_heads`, [batch, heads, seq, head_dim] -> [batch, seq, n_embd]: for one
    position a reshape alone (`split_heads`)."""
    if x.shape[2] == 1:
        return tf.reshape(x, [-1, 1, x.shape[1] * x.shape[3]])
    return model.merge_heads(x)


def decode(params, hparams, X, cache, start, choices=Choices()):
    """X [batch, seq] at positions start.. -> (hidden [batch, seq, n_embd], the cache with their
    keys and values). Attention covers the whole cache; the mask hides what is not yet written.
    With `Choices.inplace_cache` the cache's memory is written: give it a cache from `own_cache`.
    params from `column_halves` take a cache in groups of heads: `empty_cache(..., head_groups(n_head))`;
    params from `stack_layers` are unstacked here, within the pass."""
    params = unstack_layers(params)
    positions = start + tf.range(tf.shape(X)[1])  # [seq]
    h = tf.gather(params["wte"], X) + tf.gather(params["wpe"], positions)  # [batch, seq, n_embd]
    mask = positions[:, None] >= tf.range(tf.shape(cache_tensor(cache))[3])[None]  # [seq, size]
    rows = {t.shape[2]: cache_rows(t, positions) for t in tf.nest.flatten(cache[0])}  # by heads: each layer's
    # Fused kernels may keep their weights converted (Choices.frozen_weights): each layer then
    # gets kernels of its own, traced inline, whether or not TensorFlow inlines a shared function.
    # So do einsums, which keep none today, lest a later oneDNN keep some.
    layer = block.python_function if choices.fused_matmuls or choices.einsum_matmuls else block
    new_cache = []
    for p, layer_cache in zip(params["h"], cache):
        h, layer_cache = layer(h, p, layer_cache, rows, mask, hparams.n_head, choices)
        new_cache.append(layer_cache)
    return h, new_cache


def transposed_wte(params):
    """wte transposed, [n_embd, n_vocab]: the unembedding's matrix, made once a call and passed
    to the decode loop as an input, so that no compiler folds the transpose back into the
    matmul. A matmul by it beats one by wte transposed on the fly at batch 8, with XLA and
    without (bench_generate.py --alternate transposed_wte --batch_size 8). Not a CPU-only
    choice: the matrix is the usual layout for any matmul, and a GPU copies it in well under
    a millisecond (not measured there yet)."""
    return tf.transpose(params["wte"])


def last_logits(params, h, wte_t, zeros=None):
    """h [batch, seq, n_embd], wte_t [n_embd, n_vocab] (`transposed_wte`) -> float32 logits
    [batch, n_vocab] of the last position. `zeros` [n_vocab], a bias that changes no logit, is
    for `Choices.fused_matmuls`: only a matmul with a bias is one oneDNN fuses and keeps its
    weights converted for (`Choices.frozen_weights`). It must come from outside the compiled
    function: a constant of zeros there is folded away, and wte converted at every step
    (bench/README.md, "bfloat16 on a CPU with bfloat16 instructions"). wte_t and zeros may be
    lists of column blocks (`column_halves`)."""
    h = model.norm(h[:, -1], params["ln_f"])  # [batch, n_embd]
    if isinstance(wte_t, list):
        blocks_zeros = zeros or [None] * len(wte_t)
        return tf.concat([last_logits_of(h, block, block_zeros) for block, block_zeros in zip(wte_t, blocks_zeros)],
                         axis=-1)
    return last_logits_of(h, wte_t, zeros)


def last_logits_of(h, wte_t, zeros=None):
    """`last_logits` of normalized h [batch, n_embd] through wte_t [n_embd, n] -> [batch, n]."""
    logits = tf.matmul(h, wte_t)  # [batch, n]
    return tf.cast(logits if zeros is None else tf.nn.bias_add(logits, zeros), tf.float32)


def column_halves(params, n_head):
    """The weights of `params`' layers (tensors), each matrix and its bias a list of two blocks,
    one for each core (`Choices.column_halves`, `cut_layer`): copies."""
    return dict(params, h=[cut_layer(p, n_head) for p in params["h"]])


def cut_layer(p, n_head):
    """A layer's weights p cut in two for `Choices.column_halves`, copies: c_attn in head halves
    (`head_halves`) and attn's c_proj in the rows that each group of heads' output meets, c_fc
    in column halves and mlp's c_proj in the rows that each half's output meets, so that `block`
    takes each half of a sublayer through both its matrices on its own and adds the two. One head
    leaves c_attn whole, and attn's c_proj in column halves, which `conv1d` puts side by side."""
    attn, c_proj = p["attn"], p["attn"]["c_proj"]
    if head_groups(n_head):
        head_dim = c_proj["w"].shape[0] // n_head
        attn = dict(attn, c_attn=column_blocks(attn["c_attn"], lambda t: head_halves(t, n_head)),
                    c_proj=row_blocks(c_proj, [heads * head_dim for heads in head_groups(n_head)]))
    else:
        attn = dict(attn, c_proj=column_blocks(c_proj, halves))
    c_fc, c_proj = p["mlp"]["c_fc"], p["mlp"]["c_proj"]
    return dict(p, attn=attn, mlp=dict(p["mlp"], c_fc=column_blocks(c_fc, halves),
                                       c_proj=row_blocks(c_proj, half_widths(c_proj["w"].shape[0]))))


def column_blocks(p, columns):
    """A matrix and its bias, p {"w": [nx, nf], "b": [nf]}, as [{"w", "b"}] of the column blocks
    columns(t) cuts from each: copies."""
    return [{"w": w, "b": b} for w, b in zip(columns(p["w"]), columns(p["b"]))]


def row_blocks(p, widths):
    """A matrix and its bias, p {"w": [nx, nf], "b": [nf]}, as [{"w", "b"}] of w's blocks of
    `widths` rows, whose products with the matching blocks of an input's columns add up to the
    input's product with w: the first with the bias, the others with zeros (a matmul without a
    bias is not one that oneDNN fuses and keeps its weights converted for: `last_logits`). Copies,
    not views: TensorFlow's split along the first axis shares the matrix's memory, which would
    hold the whole matrix while any block lives (`stack_layers` releases them one by one)."""
    zeros = tf.zeros_like(p["b"])
    blocks = [tf.raw_ops.DeepCopy(x=w) for w in tf.split(p["w"], widths, axis=0)]
    return [{"w": w, "b": p["b"] if i == 0 else zeros} for i, w in enumerate(blocks)]


def stack_layers(layers):
    """The layers' weights [layer] (tensors: whole, or cut by `cut_layer`) stacked
    (`Choices.stacked_layers`): one layer whose every weight is the layers' [n_layer, ...].
    Copies, made a weight at a time; `layers` is emptied, and where nothing else holds them each
    weight's layers are released as soon as that weight is stacked, so that beside the layers'
    other weights only the stacks made so far are held. `decode` unstacks them
    (`unstack_layers`)."""
    structure = tf.nest.map_structure(lambda t: 0, layers[0])
    weights = [tf.nest.flatten(layer) for layer in layers]  # [layer][weight]
    layers.clear()
    stacks = []
    for i in range(len(weights[0])):
        stacks.append(tf.stack([layer[i] for layer in weights]))  # [n_layer, ...]
        for layer in weights:
            layer[i] = None
    return tf.nest.pack_sequence_as(structure, stacks)


def sampling_params(params, n_head, choices):
    """params (tensors) as a Sampler with `choices` keeps them: with `Choices.column_halves`
    each layer's matrices cut in halves (`cut_layer`), with `Choices.stacked_layers`
    every layer's weight one stack (`stack_layers`). Copies of what they change: the Sampler
    makes them of the weights it is given whole; weights `load_params(..., choices)` read so
    come back as they are."""
    stacked = not isinstance(params["h"], list)
    cut = isinstance((params["h"] if stacked else params["h"][0])["mlp"]["c_fc"], list)
    if (cut or stacked) and cut != choices.column_halves:
        raise ValueError("the weights were laid out for other choices than the Sampler's: load them with its "
                         "choices (fast.load_params(..., choices)) or whole")
    if stacked:
        return params
    layers = [cut_layer(p, n_head) for p in params["h"]] if choices.column_halves and not cut else list(params["h"])
    return dict(params, h=stack_layers(layers) if choices.stacked_layers else layers)


def unstack_layers(params):
    """params with its layers a list, as `decode` reads them: those of `stack_layers` unstacked,
    each weight a slice of its stack that shares its memory (one Unpack op a weight, which copies
    nothing where a layer's slice takes a multiple of 64 bytes, as GPT-2's all do)."""
    if isinstance(params["h"], list):
        return params
    weights = [tf.unstack(t) for t in tf.nest.flatten(params["h"])]  # each [n_layer] of one weight
    return dict(params, h=[tf.nest.pack_sequence_as(params["h"], list(layer)) for layer in zip(*weights)])


def head_groups(n_head):
    """The heads of each of c_attn's head halves (`head_halves`); None for one head, which
    `column_halves` leaves whole."""
    return half_widths(n_head) if n_head > 1 else None


def head_halves(t, n_head):
    """c_attn's columns t [..., 3 * n_embd] (q, k, v) -> two [..., 3 * heads * head_dim], each the
    q, k and v columns of one group of heads (`head_groups`), in that order: copies."""
    widths = [heads * t.shape[-1] // (3 * n_head) for heads in head_groups(n_head)]
    q, k, v = [tf.split(part, widths, axis=-1) for part in tf.split(t, 3, axis=-1)]
    return [tf.concat(group, axis=-1) for group in zip(q, k, v)]


def halves(t):
    """t [..., n] -> [t[..., :n - n // 2], t[..., n - n // 2:]]: copies, not views."""
    return tf.split(t, half_widths(t.shape[-1]), axis=-1)


def half_widths(n):
    """The widths of two halves of n columns (`halves`) or rows: the first takes the odd one."""
    return [n - n // 2, n // 2]


# --- Choosing the next token ----------------------------------------------------------------

def ordered_keys(logits):
    """float32 -> int32 keys ordered like the floats: a float's bits read as an integer, the
    negative ones' other bits flipped."""
    bits = tf.bitcast(logits, tf.int32)
    return tf.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def key_value(keys):
    """`ordered_keys`' inverse."""
    return tf.bitcast(tf.where(keys < 0, keys ^ 0x7FFFFFFF, keys), tf.float32)


def largest_key_where(keys, holds):
    """keys [batch, n] (`ordered_keys`) -> [batch, 1]: each row's largest key t where holds(t),
    a test that is true at the row's smallest key, false above its largest, and never true
    above a t where it is false. A binary search: at most 32 rounds, each one pass over keys."""
    lo = tf.cast(tf.reduce_min(keys, axis=-1, keepdims=True), tf.int64)  # holds
    hi = tf.cast(tf.reduce_max(keys, axis=-1, keepdims=True), tf.int64) + 1  # does not

    def halve(lo, hi):
        mid = (lo + hi) // 2
        yes = holds(tf.cast(mid, tf.int32))
        return tf.where(yes, mid, lo), tf.where(yes, hi, mid)

    lo, _ = tf.while_loop(lambda lo, hi: tf.reduce_any(hi - lo > 1), halve, [lo, hi])
    return tf.cast(lo, tf.int32)


def kth_largest(logits, k):
    """[batch, n] float32 -> [batch, 1]: each row's k-th largest logit, found exactly, for XLA,
    whose sort-based top_k is slow on CPU (bench_generate.py --plain kth_largest): the largest
    value that at least k logits reach."""
    keys = ordered_keys(logits)
    count = lambda t: tf.reduce_sum(tf.cast(keys >= t, tf.int32), axis=-1, keepdims=True)
    return key_value(largest_key_where(keys, lambda t: count(t) >= k))


# How far from p a cumulative probability must be for `top_p_threshold`'s sums to decide as the
# reference's do: both sum the same float64 weights in other orders, each within 6e-12 of the
# exact sum (`sample.softmax_weights`), so within 1.2e-11 of each other; this is 20 times that.
MARGIN = 2.0 ** -32


def top_p_threshold(logits, p):
    """The smallest logit `sample.top_p_logits` keeps, found without sorting: logits [batch,
    n_vocab], p -> (threshold [batch, 1], decided [batch] bool: false where a cumulative
    probability lies within MARGIN of p, and the order of summation could decide).

    The reference keeps the sorted logits while their cumulative probability stays <= p, and
    at least the first. A binary search finds `out`, the largest logit at which the mass of the
    logits >= it passes p. The nucleus is the logits above `out` (their mass is <= p), and `out`
    too where it is the largest, or where the cumulative sum at its first copy is <= p (`out`
    tied with other logits: the reference keeps every logit equal to the one it stops at).
    """
    weights, total = sample.softmax_weights(logits)  # [batch, n_vocab], [batch, 1] float64
    p = tf.cast(p, tf.float64)
    keys = ordered_keys(logits)
    mass = lambda t: tf.reduce_sum(tf.where(keys >= t, weights, 0.0), axis=-1, keepdims=True) / total
    out = largest_key_where(keys, lambda t: mass(t) > p)  # [batch, 1]
    above, with_out = mass(out + 1), mass(out)  # <= p, > p
    first_out = above + tf.reduce_max(tf.where(keys == out, weights, 0.0), axis=-1, keepdims=True) / total
    largest = above == 0  # nothing above out (the largest logit's weight is 1)
    next_up = tf.reduce_min(tf.where(keys > out, logits, logits.dtype.max), axis=-1, keepdims=True)
    threshold = tf.where(largest | (first_out <= p), key_value(out), next_up)
    near = lambda m: tf.abs(m - p) <= MARGIN
    return threshold, ~(near(above) | near(with_out) | near(first_out))[:, 0]


def top_p_logits(logits, p):
    """`sample.top_p_logits` without sorting the vocabulary (bench_generate.py --plain
    top_p_logits): the threshold `top_p_threshold` finds, or, for a row it leaves undecided, the
    reference's. p may be a scalar tensor."""
    def cut():
        threshold, decided = top_p_threshold(logits, p)
        kept = tf.where(logits < threshold, logits.dtype.min, logits)

        def reference_row(row):  # row (kept, logits, decided) -> [n_vocab]
            return tf.cond(row[2], lambda: row[0], lambda: sample.top_p_logits(row[1][None], p)[0])
        return tf.cond(tf.reduce_all(decided), lambda: kept, lambda: tf.map_fn(
            reference_row, (kept, logits, decided), fn_output_signature=logits.dtype))
    return sample.branch(p >= 1, lambda: logits, cut)


def next_token(logits, keys, step, temperature, top_k, top_p, xla):
    """`sample.next_token`'s token, faster: top-p filtered by `top_p_logits`; without XLA top-k
    alone by `draw_top_k`; under XLA top-k by `kth_largest` and the draw's argmax by
    `first_argmax`. temperature, top_k and top_p may be scalar tensors (the exported model's
    runtime inputs)."""
    logits = sample.with_temperature(logits, temperature)
    if not xla:
        def filtered():
            kept = top_p_logits(sample.top_k_logits(logits, top_k), top_p)
            return sample.branch((top_k == 0) & (top_p >= 1), lambda: sample.sample_logits(kept, keys, step),
                                 lambda: draw_kept(kept, keys, step))
        blocks = top_k_blocks(logits)
        if not blocks:
            return filtered()
        return sample.branch((top_k > 0) & (top_k <= blocks) & (top_p >= 1),
                             lambda: draw_top_k(logits, keys, step, top_k), filtered)
    kept = sample.branch(top_k == 0, lambda: logits,
                         lambda: tf.where(logits < kth_largest(logits, top_k), logits.dtype.min, logits))
    return first_argmax(top_p_logits(kept, top_p) + sample.draw_noise(keys, step, tf.shape(logits)[1]))


def next_token_in_row_halves(logits, keys, step, temperature, top_k, top_p, xla):
    """`next_token` of each half of the rows apart (`Choices.sampling_row_halves`): logits
    [batch, n_vocab] with batch known and 2 or more, keys [batch, 2] -> [batch] int32."""
    widths = half_widths(logits.shape[0])
    return tf.concat([next_token(rows, row_keys, step, temperature, top_k, top_p, xla)
                      for rows, row_keys in zip(tf.split(logits, widths), tf.split(keys, widths))], axis=0)


def draw_kept(logits, keys, step):
    """`sample.sample_logits` for logits a filter has cut: noise for the kept ones only (above
    float32's lowest, which the filters give the others), a few dozen hashes rather than one per
    vocabulary entry (bench_generate.py --plain draw_kept); not for XLA, whose shapes cannot
    depend on the logits. The same token: a removed logit plus any noise stays float32's lowest,
    and the kept row's largest, 0 after `sample.with_temperature`, is always above it."""
    kept = tf.where(logits > logits.dtype.min)  # [m, 2] (row, token id)
    return draw_among(kept[:, 0], tf.cast(kept[:, 1], tf.int32), tf.gather_nd(logits, kept), keys, step,
                      tf.shape(logits)[1])


def draw_among(row, index, values, keys, step, n):
    """`sample.sample_logits`' draw among some of the logits of n token ids, the others left out:
    values [m], their token ids index [m] int32 and rows row [m] -> [batch] int32, each row's
    token, the first of equal scores as argmax's. Each row must have some."""
    batch = tf.shape(keys)[0]
    state = tf.gather(sample.stream_state(keys, step), row)  # [m]
    scores = values + sample.gumbel(state, index)  # [m]
    best = tf.gather(tf.math.unsorted_segment_max(scores, row, batch), row)  # [m]: its row's largest score
    return tf.math.unsorted_segment_min(tf.where(scores == best, index, n), row, batch)  # the first of it, as argmax


TOP_K_BLOCK = 128  # the logits of each block of `draw_top_k`'s search


def top_k_blocks(logits):
    """The blocks `draw_top_k` cuts a row of logits [batch, n] into: the largest top-k it takes;
    0 for n unknown until the graph runs."""
    return -(-logits.shape[-1] // TOP_K_BLOCK) if logits.shape[-1] else 0


def draw_top_k(logits, keys, step, k):
    """`sample.sample_logits(sample.top_k_logits(logits, k), keys, step)`, the same token, for k
    from 1 to `top_k_blocks(logits)`, without TensorFlow's top-k over each whole row or a row of
    filtered logits: logits [batch, n] float32 -> [batch] int32. At top-k 40 over GPT-2's
    vocabulary a step's draw takes a third of the time at 4 rows, half at 1: 1.04-1.06x the
    tokens/s at batch 8 in bfloat16 on a Zen 4, the same at batch 1 (bench_generate.py --dtype
    bfloat16 --batch_size B --alternate draw_top_k; bench/README.md).

    Each row in blocks of TOP_K_BLOCK: the k-th largest of the blocks' maxima is a floor under
    the row's k-th largest logit, since k blocks reach it, so every logit top-k keeps lies in a
    block whose maximum reaches the floor, k blocks but for ties. The k-th largest is found
    among the logits of those blocks that reach the floor, and the draw made among the ones
    that reach it (`draw_among`). Not for XLA, whose shapes cannot depend on the logits."""
    n = logits.shape[-1]
    blocks = tf.reshape(tf.pad(logits, [[0, 0], [0, -n % TOP_K_BLOCK]], constant_values=-np.inf),
                        [tf.shape(logits)[0], -1, TOP_K_BLOCK])  # [batch, blocks, TOP_K_BLOCK]
    maxima = tf.reduce_max(blocks, axis=-1)  # [batch, blocks]
    floor = tf.math.top_k(maxima, k).values[:, -1]  # [batch]
    reached = tf.where(maxima >= floor[:, None])  # [r, 2] (row, block)
    candidates = tf.gather_nd(blocks, reached)  # [r, TOP_K_BLOCK]
    above = tf.where(candidates >= tf.gather(floor, reached[:, 0])[:, None])  # [m, 2] (reached block, column)
    values, row = tf.gather_nd(candidates, above), tf.gather(reached[:, 0], above[:, 0])  # [m] each
    index = tf.gather(reached[:, 1], above[:, 0]) * TOP_K_BLOCK + above[:, 1]  # [m] token ids
    rows = tf.RaggedTensor.from_value_rowids(values, row, nrows=tf.shape(logits, out_type=tf.int64)[0],
                                             validate=False)  # row: tf.where's, sorted and in range: no checking ops
    kth = tf.math.top_k(rows.to_tensor(-np.inf), k).values[:, -1]  # [batch]: each has k or more
    kept = values >= tf.gather(kth, row)  # [m]
    return draw_among(tf.boolean_mask(row, kept), tf.cast(tf.boolean_mask(index, kept), tf.int32),
                      tf.boolean_mask(values, kept), keys, step, n)


def first_argmax(scores):
    """`tf.argmax(scores, axis=-1)` for XLA: [batch, n] -> [batch] int32, the first index of each
    row's largest score, as two plain reductions. XLA's argmax is one reduction over (value,
    index) pairs, which it does not vectorize and into which it fuses the computation of the
    Gumbel noise: the draw at batch 8 took 13.4 ms a step, 1.2 ms this way
    (bench_generate.py --sampling_step, ms_draw, and with --plain first_argmax)."""
    largest = tf.reduce_max(scores, axis=-1, keepdims=True)  # [batch, 1]
    n = tf.shape(scores)[-1]
    return tf.reduce_min(tf.where(scores == largest, tf.range(n)[None], n), axis=-1)


# --- The sampler ----------------------------------------------------------------------------

# What a drawn id past the vocabulary means: every score of a row was NaN, where XLA's argmax
# (`first_argmax`) and the filtered draws (`draw_among`) give n. TensorFlow's argmax, the draw
# of top-k 0 without XLA, gives an id inside it: weights that hold NaN are refused as they load
# (`check_finite`), but NaN that a computation makes there is not caught.
NAN_LOGITS = ("the model's logits are NaN, so no token could be drawn: its weights hold NaN or infinity (a "
              "fine-tuning run that diverged?), or its float16 computation overflowed (try float32 or bfloat16)")

GROWTH = 32  # positions a growing cache takes at a time (`Choices.growing_cache`)


def cache_size(positions, n_ctx, multiple=128):
    """Positions rounded up to a multiple, so a few compiled shapes serve every length (XLA
    compiles each shape anew: bench_generate.py's warm_up); positions may be a scalar tensor."""
    rounded = -(-positions // multiple) * multiple
    return tf.minimum(rounded, n_ctx + 1) if tf.is_tensor(rounded) else min(rounded, n_ctx + 1)


def decode_signature(hparams, dtype, batch_size, cache_dtype, in_halves=False):
    """The input signature of `Sampler._decode_loop` for `batch_size` rows (None: any), weights
    in `dtype`, the cache in `cache_dtype` (`cache_dtype_for`), wte_t whole or `in_halves` (and
    then the cache in groups of heads: `column_halves`)."""
    wte_t = ([tf.TensorSpec([hparams.n_embd, n], dtype) for n in half_widths(hparams.n_vocab)] if in_halves
             else tf.TensorSpec([hparams.n_embd, hparams.n_vocab], dtype))
    groups = head_groups(hparams.n_head) if in_halves else None
    return [cache_spec(hparams, batch_size, cache_dtype, groups), tf.TensorSpec([batch_size, None], tf.int32),
            tf.TensorSpec([batch_size], tf.int32), tf.TensorSpec([batch_size], tf.bool),
            tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),
            tf.TensorSpec([batch_size, 2], tf.int64), tf.TensorSpec([], tf.float32), wte_t]


class Sampler:
    """Compiled sampling for one model and one choice of filters.

    Create a Sampler once and call `generate` (streaming) or `sample` many times: the prompt's
    pass is traced once and the decode loop once per batch size, and with XLA compiled once per
    batch size and cache size. Row r of a call is sample number first_sample + r of its seed,
    whatever the batch (see sample.py).

    The prompts of a batch may differ in length (a list of token lists): the common prefix is
    fed at once, then one position a step, a row still inside its prompt taking its own next
    prompt token rather than the one drawn, as `serving.generate_tokens` does. So each row gives
    the tokens its prompt gives alone.

    `choices` (default: `choices_for` the weights' dtype) sets how it runs; `jit` forces XLA on
    or off, and a Sampler forced so takes XLA alone, or none of the choices.
    """

    def __init__(self, params, hparams, *, top_k=0, top_p=1.0, end_token=None, jit=None, choices=None):
        check_weights_can_change(params)
        self.hparams = hparams
        self.top_k, self.top_p, self.end_token = top_k, top_p, end_token
        self.dtype = params["wte"].dtype
        self.choices = choices or choices_for(self.dtype)
        if jit is not None and jit != self.choices.xla:  # XLA forced on or off: that alone
            self.choices = Choices(xla=jit)
        self._zeros = tf.zeros([hparams.n_vocab], self.dtype) if self.choices.fused_matmuls else None  # see last_logits
        # What the passes read, all the Sampler keeps: the weights, and wte transposed
        # (`last_logits`). Tensors never change: transposed once, not at every call (a tenth of a
        # second or more), and with `Choices.column_halves` the matrices halved once and with
        # `Choices.stacked_layers` stacked once (`sampling_params`; the scripts load them so:
        # load_params(..., choices)). Variables are read as they are, and wte transposed at each
        # call (`generate`).
        changing = any(isinstance(value, tf.Variable) for value in tf.nest.flatten(params))
        self._params, self._wte_t = params, None if changing else transposed_wte(params)
        self._groups = None  # the cache's groups of heads (`empty_cache`), as c_attn's halves take them
        if not changing:
            self._params = sampling_params(params, hparams.n_head, self.choices)
            if self.choices.column_halves:
                self._wte_t, self._zeros = halves(self._wte_t), None if self._zeros is None else halves(self._zeros)
                self._groups = head_groups(hparams.n_head)
        # The prompt's pass runs without XLA, which would compile anew for each prompt length.
        self._prefills = {}  # the cache's dtype -> the prompt's pass (`_prefill`)
        self._decoders = {}  # batch size -> the decode loop traced for it (`_decoder`)
        self._first_calls = logs.FirstCalls()  # by (batch size, cache size)
        self.tokens_generated = 0  # new tokens of every row, over all calls: how fast it ran (cli.Speed)
        # Of those, the ones made by calls that traced or compiled (the first of each batch and
        # cache size), and the seconds those calls took, prompt's pass included: cli.Speed's
        # rate leaves them out.
        self.compiling_tokens, self.compiling_seconds = 0, 0.0

    def _prefill(self, X, cache):
        """The prompt's keys and values X [batch, n] written into the cache: traced once for each
        cache dtype."""
        dtype = cache_tensor(cache).dtype
        if dtype not in self._prefills:
            self._prefills[dtype] = tf.function(
                lambda X, cache: decode(self._params, self.hparams, X, cache, 0, prompt_choices(self.choices))[1],
                input_signature=[tf.TensorSpec([None, None], tf.int32),
                                 cache_spec(self.hparams, None, dtype, self._groups)])
        return self._prefills[dtype](X, cache)

    def _decoder(self, batch_size):
        """The decode loop as a tf.function for `batch_size` rows, made on first use."""
        if batch_size not in self._decoders:
            cache_dtype = cache_dtype_for(self.dtype, batch_size, self.choices)
            self._decoders[batch_size] = tf.function(
                self._decode_loop, jit_compile=self.choices.xla, autograph=False,
                input_signature=decode_signature(self.hparams, self.dtype, batch_size, cache_dtype,
                                                 in_halves=isinstance(self._wte_t, list)))
        return self._decoders[batch_size]

    def _decode(self, cache, *args):
        """Runs the decode loop. The first call for a batch size, and with XLA for a cache size,
        traces or compiles it, and the C++ lines TensorFlow logs then (a program loaded from the
        disk cache, compile_cache.py, logs an error line it recovers from) are held back (logs.py)."""
        with self._first_calls(self._program(cache)):
            return self._decoder(cache_tensor(cache).shape[1])(cache, *args)

    def _program(self, cache):
        """What a call with `cache` runs: the decode loop traced for its batch size, and with XLA
        compiled for its size too."""
        batch_size, size = cache_tensor(cache).shape[1::2]
        return batch_size, size if self.choices.xla else None

    def _capacity(self, position, size):
        """The positions a cache holds while `position` is fed, for a sample of `size` positions:
        all of them, or with `Choices.growing_cache` those up to the next multiple of GROWTH."""
        return min(size, cache_size(position + 1, self.hparams.n_ctx, GROWTH)) if self.choices.growing_cache else size

    def _grown(self, cache, position, size):
        """The cache, with room for `position` (`_capacity`): padded where it has none, which
        makes tensors of its own (`own_cache`)."""
        more = self._capacity(position, size) - cache_tensor(cache).shape[3]
        pad = lambda t: tf.pad(t, [[0, 0]] * 3 + [[0, more], [0, 0]])  # [2, batch, heads, size + more, head_dim]
        return tf.nest.map_structure(pad, cache) if more > 0 else cache

    def _decode_loop(self, cache, tokens, lengths, done, position, steps, keys, temperature, wte_t):
        """Feeds tokens[:, position] and fills up to `steps` positions of tokens[:, position + 1:].

        tokens [batch, size] holds the whole sequence; row r's prompt is its first lengths[r]
        tokens, which a row keeps where it is still inside it. wte_t: `transposed_wte`, or its
        column halves. Returns (tokens, cache, done, made).
        """
        rows = tf.range(tf.shape(tokens)[0])

        def body(i, tokens, cache, done):
            p = position + i
            h, cache = decode(self._params, self.hparams, tf.gather(tokens, [p], axis=1), cache, p, self.choices)
            logits = last_logits(self._params, h, wte_t, self._zeros)  # [batch, n_vocab]
            by_halves = self.choices.sampling_row_halves and 1 < (logits.shape[0] or 0) <= SINGLE_THREADED_ROWS
            token = (next_token_in_row_halves if by_halves else next_token)(
                logits, keys, p + 1, temperature, self.top_k, self.top_p, self.choices.xla)
            if self.end_token is not None:  # a finished sample only repeats end_token
                token = tf.where(done, self.end_token, token)
            prompt = p + 1 < lengths  # [batch]: rows still inside their prompts, never done
            token = tf.where(prompt, tf.gather(tokens, p + 1, axis=1), token)
            if self.end_token is not None:
                done = done | (~prompt & (token == self.end_token))
            tokens = tf.tensor_scatter_nd_update(tokens, tf.stack([rows, tf.fill(tf.shape(rows), p + 1)], 1), token)
            return i + 1, tokens, cache, done

        def cond(i, tokens, cache, done):
            return (i < steps) & ~tf.reduce_all(done)

        made, tokens, cache, done = tf.while_loop(cond, body, [0, tokens, cache, done])
        return tokens, cache, done, made

    def generate(self, context, length, *, temperature=1.0, seed=0, first_sample=0, chunk=None):
        """Yields new tokens as [batch, k] arrays, `chunk` tokens at a time (all at once by default):
        column j is each row's j-th new token, whatever the length of its prompt.

        context [batch, n], or a list of prompts of different lengths: row r is sample number
        first_sample + r. With an end_token, rows that have ended repeat it, and generation stops
        early when every row has ended.
        """
        context, lengths = sample.as_prompts(self.hparams, context)
        batch, longest = context.shape
        shortest = int(lengths.min())
        sample.check_sampling(self.hparams, longest, length, temperature, self.top_k, self.top_p)
        size = cache_size(longest + length, self.hparams.n_ctx)  # the positions the sample takes
        cache = empty_cache(self.hparams, batch, self._capacity(shortest - 1, size),
                            cache_dtype_for(self.dtype, batch, self.choices), self._groups)
        cache = own_cache(cache, self.choices)
        compiles = self._program(cache) not in self._first_calls.seen
        started = time.perf_counter()
        if shortest > 1:  # the common prefix's keys and values, but the last token's, which the loop feeds
            compiles |= cache_tensor(cache).dtype not in self._prefills
            cache = self._prefill(context[:, :shortest - 1], cache)
        tokens = tf.constant(np.pad(context, [(0, 0), (0, size - longest)]))
        done, keys = tf.zeros([batch], tf.bool), sample.sample_keys(seed, first_sample, batch)
        wte_t = transposed_wte(self._params) if self._wte_t is None else self._wte_t  # the weights' values now
        position, made = shortest - 1, 0  # the position fed next; new tokens yielded of every row
        while made < length and not done.numpy().all():
            want = min(chunk or length, length - made)
            goal = longest - 1 + made + want  # the position fed next once the longest prompt's row has `want` more
            while position < goal and not done.numpy().all():
                cache = self._grown(cache, position, size)
                steps = min(goal, cache_tensor(cache).shape[3]) - position
                tokens, cache, done, k = self._decode(
                    cache, tokens, tf.constant(lengths), done, tf.constant(position), tf.constant(steps), keys,
                    tf.constant(temperature, tf.float32), wte_t)
                position += int(k)
            new = position + 1 - longest - made  # of every row
            drawn = np.take_along_axis(tokens.numpy(), lengths[:, None] + made + np.arange(new)[None], axis=1)
            if (drawn >= self.hparams.n_vocab).any():
                raise ValueError(NAN_LOGITS)
            self.tokens_generated += batch * new
            if compiles:  # this call traced or compiled
                self.compiling_tokens += batch * new
                self.compiling_seconds += time.perf_counter() - started
                compiles = False
            yield drawn
            made += new

    def sample(self, context, length, **kwargs):
        """context [batch, n] -> [batch, n + length]: the context, then the samples (end_token
        repeated after a sample ends). For prompts of different lengths, a list of arrays, row
        r its prompt then its `length` new tokens: what `sample([prompt r])[0]` gives."""
        prompts, lengths = sample.as_prompts(self.hparams, context)
        new = np.concatenate([np.zeros([len(prompts), 0], np.int32)] + list(self.generate(context, length, **kwargs)),
                             axis=1)
        new = np.pad(new, [(0, 0), (0, length - new.shape[1])], constant_values=self.end_token or 0)
        if len(set(lengths)) > 1:
            return [np.concatenate([row[:n], tokens]) for row, n, tokens in zip(prompts, lengths, new)]
        return np.concatenate([prompts, new], axis=1)
