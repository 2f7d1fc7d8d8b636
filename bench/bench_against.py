#!/usr/bin/env python3
"""Times sampling with src/fast.py as it was at another commit against the working tree's, in one
process, the two called in turn (medians): the measure of a change that leaves no choice to turn
off (bench_generate.py --alternate needs one). One JSON line.

    python bench/bench_against.py 93eda39 --models_dir /work/benchmodels --batch_size 1

The other modules are the working tree's: for changes to fast.py alone. Both Samplers sample the
same prompt with the same seed; `same_tokens` says whether they drew the same tokens.
"""
import argparse
import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # as the scripts start (GLIBC_TUNABLES= python bench/... to time without)
    import cli
    cli.restart_with_huge_pages()

import numpy as np  # noqa: E402

import bench_generate  # noqa: E402
import fast  # noqa: E402


def fast_at(commit):
    """src/fast.py as it was at `commit`, imported as a module of its own."""
    try:
        source = subprocess.run(["git", "-C", ROOT, "show", f"{commit}:src/fast.py"], capture_output=True, text=True,
                                check=True).stdout
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: no src/fast.py at {commit!r}: {e.stderr.strip()}")
    folder = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, folder)  # kept while the process runs: AutoGraph reads the source
    path = os.path.join(folder, f"fast_at_{commit}.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"fast_at_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commit", help="the commit whose src/fast.py to time against the working tree's")
    bench_generate.model_arguments(parser, new_tokens=128, dtype="bfloat16")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls of each, in turn")
    args = parser.parse_args()
    hparams, params = bench_generate.load_as_the_scripts_do(args)
    context = np.random.RandomState(0).randint(0, hparams.n_vocab, (args.batch_size, args.prompt_len))
    chosen = fast.choices_for(params["wte"].dtype)  # as the two below
    first = bench_generate.first_sampler(params, hparams, chosen, context)
    samplers = {"then": fast_at(args.commit).Sampler(params, hparams, top_k=40),
                "now": fast.Sampler(params, hparams, top_k=40)}
    del params  # as the scripts do: each Sampler keeps what it reads
    tokens = {name: sampler.sample(context, args.new_tokens, seed=2) for name, sampler in samplers.items()}  # traces
    seconds = {name: [] for name in samplers}
    for i in range(args.repeats):
        for name in (["then", "now"] if i % 2 == 0 else ["now", "then"]):
            seconds[name].append(bench_generate.timed(lambda: samplers[name].sample(context, args.new_tokens, seed=2)))
    del first  # held while the two ran
    rate = {name: args.batch_size * args.new_tokens / float(np.median(s)) for name, s in seconds.items()}
    print(json.dumps(dict(measure="against", commit=args.commit, model_name=args.model_name,
                          batch_size=args.batch_size, dtype=args.dtype, new_tokens=args.new_tokens,
                          repeats=args.repeats, tokens_per_s_then=rate["then"], tokens_per_s_now=rate["now"],
                          gain=rate["now"] / rate["then"], same_tokens=bool(np.array_equal(*tokens.values())),
                          **bench_generate.cpu())))


if __name__ == "__main__":
    main()
