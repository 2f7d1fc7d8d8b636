#!/usr/bin/env python3
"""Where a sampling call's time goes: one generate call profiled as the scripts run it, one JSON
line for the whole call and one for each of its costliest kinds of op.

    python bench/profile_generate.py --models_dir /work/benchmodels --batch_size 1 --dtype bfloat16

The call (the prompt's pass, then --new_tokens sampled with top-k 40) runs once to warm up, once
timed, and once under TensorFlow's profiler. From the profile's trace of the threads that run
ops, per step (a new token of each row; the prompt's pass is shared out over the steps):
`weight_matmuls_ms`, the time some matmul of the weights runs on some core
(those of `fast.conv1d` and the unembedding); `other_ops_ms`, the time other ops run and no such
matmul does; `no_op_ms`, the time no op runs at all (the executor handing ops to the cores, the
while loop's own work). `weight_matmuls_concurrency` is the matmuls' summed time over the time
some of them run: 2 where a matrix's halves (`fast.Choices.column_halves`) always run at once
on two cores. The profiler slows the call a little: `profiled_seconds` against `seconds`.
For the decode loop without XLA (bfloat16 on a CPU with bfloat16 instructions): XLA's loop is
one compiled program, whose work the trace does not split into ops.
"""
import argparse
import collections
import dataclasses
import glob
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # as the scripts start (GLIBC_TUNABLES= python bench/... to profile without)
    import cli
    cli.restart_with_huge_pages()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import bench_generate  # noqa: E402
import fast  # noqa: E402

# The kinds of op that multiply by the weights: oneDNN's (fused or einsum) and TensorFlow's own.
WEIGHT_MATMULS = {"_MklNativeFusedMatMul", "_MklFusedMatMul", "_MklMatMul", "_MklNativeMatMul", "_MklEinsum",
                  "MatMul", "_FusedMatMul", "Einsum"}


def op_events(xspace_path):
    """The ops a profile's compute threads ran: [(start µs, end µs, kind of op)]. An op's event is
    named 'node:kind'; the executor's own are named 'Class::method'."""
    space = xplane_pb2.XSpace()
    with open(xspace_path, "rb") as f:
        space.ParseFromString(f.read())
    host = next(plane for plane in space.planes if plane.name == "/host:CPU")
    events = []
    for line in host.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name
            if ":" in name and "::" not in name:
                start = line.timestamp_ns / 1e3 + event.offset_ps / 1e6
                events.append((start, start + event.duration_ps / 1e6, name.rsplit(":", 1)[1]))
    return events


def covered(intervals):
    """The time some interval covers: [(start, end)] -> µs."""
    total, end = 0.0, -np.inf
    for start, stop in sorted(intervals):
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return total


def profile(sampler, context, new_tokens):
    """The profile of one `sampler.sample` call: (seconds it took, its op events)."""
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        seconds = bench_generate.timed(lambda: sampler.sample(context, new_tokens, seed=2))
        tf.profiler.experimental.stop()
        return seconds, op_events(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0])


def summary(events, seconds, new_tokens, top):
    """The call's JSON line, then the `top` costliest kinds of op's, per step."""
    per_step = lambda microseconds: microseconds / 1e3 / new_tokens  # -> ms
    matmuls = [(start, end) for start, end, kind in events if kind in WEIGHT_MATMULS]
    any_op, some_matmul = covered([(start, end) for start, end, _ in events]), covered(matmuls)
    yield dict(measure="call", profiled_seconds=seconds, ms_per_step=per_step(seconds * 1e6),
               weight_matmuls_ms=per_step(some_matmul), other_ops_ms=per_step(any_op - some_matmul),
               no_op_ms=per_step(seconds * 1e6 - any_op),
               weight_matmuls_concurrency=sum(end - start for start, end in matmuls) / some_matmul if matmuls else None)
    time_of, calls = collections.Counter(), collections.Counter()
    for start, end, kind in events:
        time_of[kind] += end - start
        calls[kind] += 1
    for kind, microseconds in time_of.most_common(top):
        yield dict(measure="op", kind=kind, ms_per_step=per_step(microseconds), calls_per_step=calls[kind] / new_tokens,
                   microseconds_per_call=microseconds / calls[kind])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_generate.model_arguments(parser, dtype="bfloat16")
    parser.add_argument("--plain", choices=bench_generate.CHOICES, action="append", default=[],
                        help="profile without this choice of fast.Choices (repeatable)")
    parser.add_argument("--top", type=int, default=12, help="kinds of op to list, the costliest first")
    args = parser.parse_args()
    hparams, params = bench_generate.load_as_the_scripts_do(args)
    choices = bench_generate.choices(params["wte"].dtype, args, args.plain)
    sampler = fast.Sampler(params, hparams, top_k=40, choices=choices)
    del params  # as the scripts do: the Sampler keeps what it reads
    context = np.random.RandomState(0).randint(0, hparams.n_vocab, (args.batch_size, args.prompt_len))
    sampler.sample(context, args.new_tokens, seed=2)  # traces, and oneDNN converts the weights
    seconds = bench_generate.timed(lambda: sampler.sample(context, args.new_tokens, seed=2))
    common = dict(model_name=args.model_name, batch_size=args.batch_size, dtype=args.dtype, new_tokens=args.new_tokens,
                  choices=dataclasses.asdict(sampler.choices), **bench_generate.cpu())
    profiled, events = profile(sampler, context, args.new_tokens)
    for line in summary(events, profiled, args.new_tokens, args.top):
        print(json.dumps(dict(line, **({"seconds": seconds, **common} if line["measure"] == "call" else {}))))


if __name__ == "__main__":
    main()
