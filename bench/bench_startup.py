#!/usr/bin/env python3
"""Times `generate_unconditional_samples.py` from launch to its first sample, as a user runs it.

    GPT2_VOCAB_DIR=../shared/gpt2-vocab python bench/bench_startup.py --length 32

Prints one JSON line a run: seconds from launch to the first sample's header, to its first token,
and to its end. The runs share a new, empty XLA cache folder (src/compile_cache.py), so the
first starts cold and the others load its compiled programs; --no_cache turns the cache off. The 124M-shaped checkpoint is made as by bench_generate.py (it needs the
vocabulary: GPT2_VOCAB_DIR, or a real model in --models_dir).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import bench_generate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name", default="124M")
    parser.add_argument("--models_dir", default=os.path.join(bench_generate.ROOT, "bench", "models"))
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no_cache", action="store_true", help="GPT2_XLA_CACHE=0: compile at every start")
    args = parser.parse_args()
    path = bench_generate.ensure_model(args.models_dir, args.model_name)
    if not os.path.isfile(os.path.join(path, "encoder.json")):
        sys.exit(f"error: {path} has no encoder.json: set GPT2_VOCAB_DIR and delete {path} to remake it")
    command = [sys.executable, os.path.join(bench_generate.ROOT, "src", "generate_unconditional_samples.py"),
               "--model_name", args.model_name, "--models_dir", args.models_dir, "--nsamples", "1",
               "--length", str(args.length), "--seed", "1", "--dtype", args.dtype]
    cache = tempfile.mkdtemp(prefix="bench-startup-xla-")
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", "GPT2_XLA_CACHE": "0" if args.no_cache else cache}
    try:
        for run in range(args.runs):
            marks = time_to_first_sample(command, environ)
            print(json.dumps(dict(measure="startup", model_name=args.model_name, dtype=args.dtype, length=args.length,
                                  xla_cache="off" if args.no_cache else "warm" if run else "cold", **marks)))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def time_to_first_sample(command, environ):
    """Seconds from launch to the first sample's header, its first token and the end."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=environ)
    marks = {}
    out = b""
    while byte := process.stdout.read(1):
        out += byte
        if "header" not in marks and out.endswith(b"=" * 40 + b"\n"):
            marks["header"] = time.perf_counter() - start
        elif "header" in marks and "first_token" not in marks:
            marks["first_token"] = time.perf_counter() - start
    process.wait()
    return dict(seconds_to_header=marks.get("header"), seconds_to_first_token=marks.get("first_token"),
                seconds_to_end=time.perf_counter() - start, returncode=process.returncode)

if __name__ == "__main__":
    main()
