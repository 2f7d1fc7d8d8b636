#!/usr/bin/env python3
"""Times the exported model's `generate` signature against `fast.Sampler`: one JSON line each.

    python bench/bench_serving.py --model_name 124M --models_dir bench/models --new_tokens 32

The model is exported to a temporary folder and loaded back, as a server loads it; the same
prompt, filters and seed then run through the signature and through Sampler (without XLA, as the
export runs by default, and with the device's choices, as the scripts run), in turn --repeats
times; --xla times an export whose decode loop XLA compiles (export_model.py --xla) as well. --weights_in_loop exports with
the variables read at every step of the decode loop instead of once per request
(`serving.Servable._weights`), to measure what reading them once wins.
"""
import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fast  # noqa: E402
import model  # noqa: E402
import serving  # noqa: E402
from bench_generate import ensure_model  # noqa: E402


def timed(run, new_tokens):
    """Tokens per second of run(n) making new_tokens, after a warm-up of 2."""
    run(2)
    start = time.perf_counter()
    tokens = run(new_tokens)
    return new_tokens / (time.perf_counter() - start), tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", default="124M")
    parser.add_argument("--models_dir", default=os.path.join(ROOT, "bench", "models"))
    parser.add_argument("--new_tokens", type=int, default=32, help="at most 126: one cache size for all calls")
    parser.add_argument("--repeats", type=int, default=1, help="times each way runs, in turn")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--weights_in_loop", action="store_true")
    parser.add_argument("--xla", action="store_true", help="time an export with XLA (export_model.py --xla) too")
    args = parser.parse_args()
    path = ensure_model(args.models_dir, args.model_name)
    hparams = model.load_hparams(path)
    params = fast.load_params(model.find_checkpoint(path), hparams)
    if args.weights_in_loop:
        serving.Servable._weights = lambda self: self.params
    context = np.full([args.batch_size, 1], 464, np.int32)
    with tempfile.TemporaryDirectory() as folder:
        request = dict(context=tf.constant(context), context_length=tf.fill([args.batch_size], 1),
                       temperature=tf.constant(1.0), top_k=tf.constant(40), top_p=tf.constant(1.0),
                       seed=tf.constant(1, tf.int64))
        runs = {}
        for xla in [False, True][:1 + args.xla]:
            serving.export(params, hparams, os.path.join(folder, str(xla), "1"), xla=xla)
            generate = tf.saved_model.load(os.path.join(folder, str(xla), "1")).signatures["generate"]
            export = "export" + (" --weights_in_loop" if args.weights_in_loop else "") + (" --xla" if xla else "")
            runs[export] = lambda n, generate=generate: generate(length=tf.constant(n), **request)["tokens"].numpy()
        for jit in (False, None):
            sampler = fast.Sampler(params, hparams, top_k=40, jit=jit)
            runs[f"Sampler xla={sampler.choices.xla}"] = lambda n, sampler=sampler: sampler.sample(context, n, seed=1)[:, 1:]
        results = {what: [] for what in runs}
        tokens = {}
        for _ in range(args.repeats):  # in turn, so that the machine's load falls on each alike
            for what, run in runs.items():
                speed, tokens[what] = timed(run, args.new_tokens)
                results[what].append(round(speed * args.batch_size, 2))
    for what, speeds in results.items():
        print(json.dumps({"what": what, "same_tokens": bool((tokens[what] == tokens["export"]).all()),
                          "tokens_per_s": speeds}))

if __name__ == "__main__":
    main()
