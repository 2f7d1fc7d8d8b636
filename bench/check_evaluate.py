#!/usr/bin/env python3
"""Holds every metric of src/evaluate.py to Hugging Face's (the peer) computing the same protocol on
the same checkpoint: one JSON line per task and variant, with the largest relative difference.

    python bench/check_evaluate.py --peer ~/.cache/gpt2-peer-venv/bin/python --models_dir /work/benchmodels

The data are small files generated here, one per benchmark's format (the real test sets cannot be
downloaded where this was written): they exercise the protocols (LAMBADA's split and variants,
sliding windows over a text longer than the window, CBT's candidates), not the figures of Table 3.
The peer (bench/peer_evaluate.py) tokenizes with transformers' GPT2Tokenizer, scores with its
PyTorch GPT-2 and writes the protocol again; what it is given is the detokenized text
(detokenizers.py is held to hand-written outputs in tests/test_detokenizers.py). Never in CI.
The peer's vocabulary (encoder.json, vocab.bpe) comes from GPT2_VOCAB_DIR, else
../shared/gpt2-vocab beside the repository.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import benchmarks  # noqa: E402
import checkpoints  # noqa: E402
import cli  # noqa: E402
import detokenizers  # noqa: E402
import evaluate  # noqa: E402
import evaluation  # noqa: E402
from bench_generate import ensure_model  # noqa: E402

WORDS = ("the a man woman dog cat house river king queen said went saw took gave found old little "
         "with and but then there was were had ran walked looked door garden morning night Tom Anna "
         "Boulter Mississippi").split()


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_files(folder, rng):
    """{task: path} of a small file in each benchmark's format."""
    files = {}

    def write(name, data):
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path
    passages = [sentence(rng, rng.randint(20, 120)) + " " + rng.choice(WORDS) for _ in range(24)]
    files["lambada"] = write("lambada.jsonl", "".join(json.dumps({"text": p}) + "\n" for p in passages))
    wiki = "".join(f" = {sentence(rng, 2)} = \n \n {sentence(rng, 40)} , 1 @,@ 000 @-@ year ( {sentence(rng, 3)} ) . \n"
                   for _ in range(12))
    files["wikitext2"] = files["wikitext103"] = write("wiki.test.tokens", wiki)
    files["ptb"] = write("ptb.test.txt", "".join(f" {sentence(rng, 25).lower()} was n't $ N \n" for _ in range(40)))
    files["1bw"] = write("heldout", "".join(f"{sentence(rng, 20)} , he said .\n" for _ in range(40)))
    files["enwik8"] = write("enwik8", "".join(f"<page><title>{sentence(rng, 2)}</title><text>{sentence(rng, 60)} "
                                              "[[café]]</text></page>\n" for _ in range(10)).encode())
    files["text8"] = write("text8", " " + " ".join(sentence(rng, 50).lower() for _ in range(20)))
    examples = []
    for _ in range(6):
        candidates = rng.sample(WORDS, 10)
        lines = [f"{i} {sentence(rng, 12)} ." for i in range(1, 21)]
        examples.append("\n".join(lines) + f"\n21 `` {sentence(rng, 5)} XXXXX , '' said {sentence(rng, 3)} .\t"
                        f"{candidates[3]}\t\t{'|'.join(candidates)}\n")
    files["cbt-cn"] = files["cbt-ne"] = write("cbt.txt", "\n".join(examples))
    return files


def plant_answers(files, enc, hparams, params):
    """Rewrites half the LAMBADA passages to end with our greedy word, and half the CBT answers
    as our likeliest candidate, so that accuracies are neither 0 nor 1 with random weights: the
    peer agrees only if it makes the same choices."""
    import numpy as np
    function = evaluation.continuation_function(params, hparams)
    zeros = np.zeros([hparams.n_vocab], np.float32)
    passages = benchmarks.read_lambada(files["lambada"])
    for i in range(0, len(passages), 2):
        context = evaluation.passage_split(passages[i])[0]
        greedy = evaluation.score_pairs(function, hparams, [(enc.encode(context), [0])], 1, zeros)[1][0][0]
        word = enc.decode([int(greedy)])
        if word.startswith(" ") and word[1:].isalpha():
            passages[i] = context + word
    with open(files["lambada"], "w", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": p}) + "\n" for p in passages))
    examples = benchmarks.read_cbt(files["cbt-cn"])
    shared = evaluation.shared_context_function(params, hparams)
    for example in examples[::2]:
        scores = evaluation.shared_context_scores(shared, hparams, evaluation.cbt_pairs(enc, example))
        example.answer = example.candidates[int(np.argmax(scores))]
    with open(files["cbt-cn"], "w", encoding="utf-8") as f:
        f.write("\n".join("".join(f"{i} {line}\n" for i, line in enumerate(e.context, 1)) + f"21 {e.query}\t{e.answer}"
                          f"\t\t{'|'.join(e.candidates)}\n" for e in examples))


def peer_job(task, path, enc_flags, stride):
    """What the peer needs for `task` on the file at `path`."""
    if task == "lambada":
        return {"task": task, "passages": benchmarks.read_lambada(path), "stop_words": sorted(evaluation.STOP_WORDS),
                **enc_flags}
    if task in benchmarks.LANGUAGE_MODELLING:
        text, units = benchmarks.read_language_modelling(path, task)
        detokenizer, unit = benchmarks.LANGUAGE_MODELLING[task]
        return {"task": task, "text": detokenizers.detokenize(detokenizer, text), "units": units, "unit": unit,
                "stride": stride}
    questions = [{"texts": [detokenizers.detokenize("cbt", " ".join(e.context + [e.query.replace(benchmarks.BLANK, c)]))
                            for c in e.candidates], "answer": e.candidates.index(e.answer)}
                 for e in benchmarks.read_cbt(path)]
    return {"task": "cbt", "questions": questions}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", metavar="PYTHON", required=True, help="the peer venv's python")
    parser.add_argument("--model_name", default="124M")
    parser.add_argument("--models_dir", default=os.path.join(ROOT, "bench", "models"))
    parser.add_argument("--stride", type=int, default=512)
    args = parser.parse_args()
    try:
        vocab_dir = checkpoints.find_vocab_dir(os.environ)
    except ValueError as e:
        sys.exit(f"error: {e}")
    path = ensure_model(args.models_dir, args.model_name)
    enc, hparams, params = cli.load(args.model_name, args.models_dir)
    runs = [(task, {}) for task in benchmarks.TASKS if task not in ("wikitext103", "cbt-ne")]  # same files
    runs += [("lambada", {"last_token": True}), ("lambada", {"stop_word_filter": True})]
    with tempfile.TemporaryDirectory() as folder:
        files = write_files(folder, random.Random(0))
        plant_answers(files, enc, hparams, params)
        for task, flags in runs:
            flags = {"last_token": False, "stop_word_filter": False, **flags}
            ours, _ = evaluate.run_task(task, enc, hparams, params, files[task], 8, args.stride, **flags)
            job_file = os.path.join(folder, "job.json")
            with open(job_file, "w") as f:
                json.dump(peer_job(task, files[task], flags, args.stride), f)
            result = subprocess.run([args.peer, os.path.join(ROOT, "bench", "peer_evaluate.py"), path, vocab_dir,
                                     job_file], capture_output=True, text=True, check=True)
            peer = json.loads(result.stdout.splitlines()[-1])
            differences = {name: abs(ours[name] - value) / max(abs(value), 1e-12) for name, value in peer.items()}
            print(json.dumps({"task": task, **{k: v for k, v in flags.items() if v}, "ours": ours, "peer": peer,
                              "max_relative_difference": max(differences.values())}), flush=True)


if __name__ == "__main__":
    main()
