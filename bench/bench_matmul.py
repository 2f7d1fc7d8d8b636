#!/usr/bin/env python3
"""How fast the fast path's matmuls read their weights: one JSON line a shape, GB/s of weights.

    python bench/bench_matmul.py --dtype bfloat16 --rows 1 [--jit]

A decode step of batch B multiplies [B, nx] by each of a layer's four weight matrices, and by
wte: at batch 1 it reads every weight once and does little else, so a step can go no faster
than the weights' bytes over the rate these kernels read them. Each shape is timed as
`fast.conv1d` runs it with `fast.Choices(fused_matmuls=True)` (oneDNN's MatMul, BiasAdd kernel),
over 12 matrices of their own, one after another in a compiled loop, as the layers are: 124M's
weights do not fit in a CPU's cache, and neither do these. TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is
set, as the scripts set it. `streaming` is a reduction over 256 MB, what this machine reads
at most with TensorFlow's threads: the ceiling for any kernel.
"""
import argparse
import functools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # as the scripts start (GLIBC_TUNABLES= python bench/... to time without)
    import cli
    cli.restart_with_huge_pages()
os.environ.setdefault("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")  # before TensorFlow's first matmul

import tensorflow as tf  # noqa: E402

import bench_generate  # noqa: E402
import fast  # noqa: E402

# 124M's [nx, nf]: c_attn, attn's c_proj, c_fc, mlp's c_proj, and wte transposed (the unembedding).
SHAPES = {"c_attn": (768, 2304), "attn/c_proj": (768, 768), "c_fc": (768, 3072), "mlp/c_proj": (3072, 768),
          "wte_t": (768, 50257)}
MATRICES = 12  # each shape's copies, read one after another
CALLS = 20  # timed passes over them


def seconds_per_matmul(nx, nf, rows, dtype, jit=False):
    """Seconds one fused matmul of [rows, nx] by an [nx, nf] matrix takes, over MATRICES copies;
    with `jit`, model.conv1d's matmul and bias compiled by XLA instead."""
    layers = [{"w": tf.cast(tf.random.normal([nx, nf], stddev=0.02), dtype), "b": tf.zeros([nf], dtype)}
              for _ in range(MATRICES)]
    x = tf.cast(tf.random.normal([1, rows, nx]), dtype)
    choices = fast.Choices() if jit else fast.Choices(fused_matmuls=True)

    @functools.partial(tf.function, autograph=False, jit_compile=jit)
    def passes(x):
        def body(i, total):
            # Under XLA, x changes at each pass, lest XLA move the matmuls out of the loop, and the
            # whole output is read, lest it compute only the element read.
            step_x = x + tf.cast(i, x.dtype) if jit else x
            for p in layers:  # each output feeds the total, so that no matmul is dropped
                y = fast.conv1d(step_x, p, choices)
                total += tf.cast(tf.reduce_sum(y) if jit else y[0, 0, 0], tf.float32)
            return i + 1, total
        return tf.while_loop(lambda i, total: i < CALLS, body, [0, 0.0])[1]

    passes(x).numpy()  # traces, and oneDNN converts each matrix to its own layout once
    start = time.perf_counter()
    passes(x).numpy()
    return (time.perf_counter() - start) / (CALLS * MATRICES)


def streaming_rate():
    """Bytes a second that a reduction over 256 MB of float32 reads."""
    x = tf.random.normal([64 * 2 ** 20])
    total = tf.function(tf.reduce_sum)
    total(x).numpy()
    start = time.perf_counter()
    for _ in range(10):
        total(x).numpy()
    return 10 * x.shape[0] * 4 / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rows", type=int, default=1, help="rows of x: the batch size of a decode step")
    parser.add_argument("--jit", action="store_true", help="XLA's matmuls (its decode loop's) instead of oneDNN's "
                        "fused kernels; XLA_FLAGS as the environment sets them")
    args = parser.parse_args()
    dtype = tf.as_dtype(args.dtype)
    common = dict(dtype=args.dtype, rows=args.rows, jit=args.jit, xla_flags=os.environ.get("XLA_FLAGS", ""),
                  **bench_generate.cpu())
    for name, (nx, nf) in SHAPES.items():
        seconds = seconds_per_matmul(nx, nf, args.rows, dtype, args.jit)
        print(json.dumps(dict(measure="matmul", weight=name, shape=[nx, nf], microseconds=seconds * 1e6,
                              weights_gb_per_s=nx * nf * dtype.size / seconds / 1e9, **common)), flush=True)
    print(json.dumps(dict(measure="streaming", gb_per_s=streaming_rate() / 1e9, **common)))


if __name__ == "__main__":
    main()
