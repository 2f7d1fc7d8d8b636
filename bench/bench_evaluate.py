#!/usr/bin/env python3
"""Times LAMBADA's scoring (evaluate.py --task lambada) on 5,153 synthetic passages: one JSON line.

    python bench/bench_evaluate.py --model_name 124M --models_dir /work/benchmodels [--batch_size 16] [--passages 5153]

The passages are random token ids with LAMBADA's lengths, as far as they are known here (the
test set cannot be downloaded where this was written): 5,153 passages (the test set's size) of
about 90 BPE tokens, the figure the test set averages under GPT-2's BPE (its passages average
about 75 words, 4.6 sentences of context and the target sentence, Paperno et al. 2016); the
lengths are drawn from a normal distribution of mean 90 and standard deviation 25, clipped to
40..250, and the targets are 1 token (two thirds) or 2 (one third): a last word is a common word
or a name. Random weights cost what trained ones do. Timed: scoring, after the model's loading
and one warm-up batch (the tracing), as evaluate.py runs it, progress bar and metrics included;
`cpu_seconds` is this process's CPU time over the same span, which tells what a busy machine hid.

    python bench/bench_evaluate.py --models_dir /work/benchmodels --cbt 3 [--rounds 2] [--batch_size 16]

`--cbt N` times CBT's scoring instead, on N synthetic questions, both ways in turn in one
process: `rows`, a row of context and target per candidate in batches of --batch_size
(`score_pairs`, how CBT was scored before), and `shared`, the context once and the candidates'
targets after its tiled past (`shared_context_scores`, how `evaluation.cbt` scores). Each round
times both on the same questions, the first way alternating between rounds; the line gives each
way's seconds per question and the largest relative difference of their log-likelihoods. The
lengths: a context of about 440 BPE tokens (README.md's estimate of a CBT row), normal with
standard deviation 100, clipped to 150..900; ten targets, a candidate of 1 to 3 tokens and the
query's rest of 1 to 20 tokens, shared by the question's ten.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import evaluation  # noqa: E402
import fast  # noqa: E402
import model  # noqa: E402
from bench_generate import ensure_model  # noqa: E402


def synthetic_pairs(n, n_vocab, seed=0):
    """n (context ids, target ids) with LAMBADA's lengths (the module's docstring)."""
    rng = np.random.RandomState(seed)
    lengths = np.clip(rng.normal(90, 25, n).round().astype(int), 40, 250)
    target_lengths = rng.choice([1, 1, 2], n)
    return [(rng.randint(0, n_vocab, length - k).tolist(), rng.randint(0, n_vocab, k).tolist())
            for length, k in zip(lengths, target_lengths)]


def synthetic_questions(n, n_vocab, seed=0):
    """n CBT questions, each 10 (context ids, target ids) sharing a context (the module's docstring)."""
    rng = np.random.RandomState(seed)
    questions = []
    for length in np.clip(rng.normal(440, 100, n).round().astype(int), 150, 900):
        context, rest = rng.randint(0, n_vocab, length).tolist(), rng.randint(0, n_vocab, rng.randint(1, 21)).tolist()
        questions.append([(context, rng.randint(0, n_vocab, rng.randint(1, 4)).tolist() + rest) for _ in range(10)])
    return questions


def time_cbt(params, hparams, n_questions, rounds, batch_size):
    """One JSON line: both of CBT's ways timed in turn (the module's docstring)."""
    rows_function = evaluation.continuation_function(params, hparams)
    shared_function = evaluation.shared_context_function(params, hparams)
    zeros = np.zeros([hparams.n_vocab], np.float32)
    ways = {"rows": lambda qs: [[float(lp.sum()) for lp in evaluation.score_pairs(
                rows_function, hparams, [p for q in qs for p in q], batch_size, zeros)[0]]],
            "shared": lambda qs: [evaluation.shared_context_scores(shared_function, hparams, q) for q in qs]}
    questions = synthetic_questions(n_questions, hparams.n_vocab)
    for way in ways.values():
        way(questions[:1])  # traces
    seconds, totals = {name: [] for name in ways}, {}
    for r in range(rounds):
        for name in sorted(ways, reverse=r % 2 == 1):
            start = time.perf_counter()
            totals[name] = np.ravel(ways[name](questions))
            seconds[name].append(round(time.perf_counter() - start, 1))
    difference = np.max(np.abs(totals["shared"] - totals["rows"]) / np.abs(totals["rows"]))
    print(json.dumps({"questions": n_questions, "rounds": rounds, "batch_size": batch_size, "seconds": seconds,
                      "seconds_per_question": {name: round(sum(s) / (rounds * n_questions), 2)
                                               for name, s in seconds.items()},
                      "speed_up": round(sum(seconds["rows"]) / sum(seconds["shared"]), 1),
                      "largest_relative_difference": float(difference), "load_average": os.getloadavg()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name", default="124M")
    parser.add_argument("--models_dir", default=os.path.join(ROOT, "bench", "models"))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--passages", type=int, default=5153)
    parser.add_argument("--cbt", type=int, default=0, help="time CBT on this many synthetic questions instead")
    parser.add_argument("--rounds", type=int, default=2, help="--cbt: rounds of both ways")
    args = parser.parse_args()
    path = ensure_model(args.models_dir, args.model_name)
    hparams = model.load_hparams(path)
    params = fast.load_params(model.find_checkpoint(path), hparams)
    if args.cbt:
        return time_cbt(params, hparams, args.cbt, args.rounds, args.batch_size)
    function = evaluation.continuation_function(params, hparams)
    pairs = synthetic_pairs(args.passages, hparams.n_vocab)
    banned = np.zeros([hparams.n_vocab], np.float32)
    evaluation.score_pairs(function, hparams, pairs[:args.batch_size], args.batch_size, banned)  # traces
    start, cpu_start = time.perf_counter(), time.process_time()
    logprobs, greedy, _ = evaluation.score_pairs(function, hparams, pairs, args.batch_size, banned)
    accuracy = np.mean([np.array_equal(g, t) for g, (_, t) in zip(greedy, pairs)])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = sum(len(c) + len(t) for c, t in pairs)
    print(json.dumps({"model_name": args.model_name, "passages": len(pairs), "batch_size": args.batch_size,
                      "tokens": tokens, "seconds": round(seconds, 1),
                      "cpu_seconds": round(cpu_seconds, 1), "tokens_per_s": round(tokens / seconds),
                      "accuracy": float(accuracy)}))


if __name__ == "__main__":
    main()
