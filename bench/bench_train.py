#!/usr/bin/env python3
"""Times fine-tuning steps: one JSON line with tokens/s and peak memory, and the peer's beside it
with --peer.

    python bench/bench_train.py --batch_size 1 --sequence_length 256 --dtype bfloat16 \
        --peer ~/.cache/gpt2-peer-venv/bin/python

Steps of `training.Trainer` on random tokens [batch, T], timed after a warm-up step (which
traces and compiles). The peak memory is the process's peak resident set (ru_maxrss), so each
configuration runs in a process of its own: this one. The model is read from --models_dir/
--model_name; for the four official names a checkpoint of that shape with random weights is
written there first if none is present (speed does not depend on the weights).
"""
import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import unittest.mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # as the scripts start (GLIBC_TUNABLES= python bench/... to time without)
    import cli
    cli.restart_with_huge_pages()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import checkpoints  # noqa: E402
import fast  # noqa: E402
import model  # noqa: E402
import training  # noqa: E402
from bench_generate import ensure_model  # noqa: E402


def trainer_and_windows(path, args):
    """A Trainer of the model at `path` as the flags ask, and random windows [1, batch, T]."""
    hparams = model.load_hparams(path)
    trainer = training.Trainer(model.read_checkpoint(model.find_checkpoint(path), hparams), hparams,
                               optimizer=args.optimizer, dtype=args.dtype, memory_saving=args.memory_saving_gradients,
                               xla=args.xla, xla_update=args.xla_update)
    return trainer, np.random.RandomState(0).randint(0, hparams.n_vocab, (1, args.batch_size, args.sequence_length))


def measure(path, args):
    trainer, windows = trainer_and_windows(path, args)
    trainer.step(windows)  # warm-up: traces and compiles
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = float(trainer.step(windows))
    seconds = time.perf_counter() - start
    return {"model": os.path.basename(path), "batch": args.batch_size, "seq": args.sequence_length, "steps": args.steps,
            "dtype": args.dtype, "optimizer": args.optimizer, "memory_saving_gradients": args.memory_saving_gradients, "xla": trainer.xla,
            "xla_update": trainer.xla_update, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "tokens_per_s": args.batch_size * args.sequence_length * args.steps / seconds, "loss": loss,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def plain_window_losses(params, hparams, inputs, targets, memory_saving=False):
    """training.window_losses the plain way: every position's logits, then TensorFlow's loss."""
    return training.predictions_loss(training.forward(params, hparams, inputs, memory_saving), targets)


# --alternate NAME: what it replaces, with what, and the flags of the Trainer without it
ALTERNATES = {"head": (training, "window_losses", plain_window_losses, {}),
              "copies": (fast, "weight_copies", lambda params, dtype: params, {}),  # the pass converts the weights
              "tied": (fast, "tied_embeddings", lambda wte: (wte, wte), {}),  # TensorFlow adds the two gradients
              "adam": (fast, "FusedAdam", keras.optimizers.Adam, {"xla_update": True}),  # Keras's, through XLA
              # the blocks' norms and GELU on TensorFlow's kernels, op by op (the final norm stays through XLA)
              "xla_fused": (training, "block", lambda x, p, n_head: model.block(x, p, None, n_head)[0], {})}


def alternate(path, args):
    """Steps with and without the choice --alternate names, in turns in one process, whose
    speed swings less than that of two processes: medians and their ratio."""
    module, name, replacement, flags = ALTERNATES[args.alternate]
    trainers = {}
    for way in ("with", "without"):
        with unittest.mock.patch.object(module, name, replacement) if way == "without" else contextlib.nullcontext():
            trainers[way], windows = trainer_and_windows(path, argparse.Namespace(**{
                **vars(args), **(flags if way == "without" else {})}))
            trainers[way].step(windows)  # traces with or without it, and compiles
    speeds = {way: [] for way in trainers}
    for _ in range(args.repeats):
        for way, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                float(trainer.step(windows))
            speeds[way].append(args.batch_size * args.sequence_length * args.steps / (time.perf_counter() - start))
    medians = {way: float(np.median(values)) for way, values in speeds.items()}
    return {"alternate": args.alternate, "dtype": args.dtype, "batch": args.batch_size, "seq": args.sequence_length,
            "tokens_per_s": speeds, "with/without": medians["with"] / medians["without"]}


def peer(python, path, args):
    """The peer's train_bench on the very checkpoint (float32 Adam)."""
    command = [python, os.path.join(ROOT, "..", "shared", "peer", "hf_generate.py"), path, "train_bench",
               str(args.batch_size), str(args.sequence_length), str(args.steps)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name", default="124M")
    parser.add_argument("--models_dir", default=os.path.join(ROOT, "bench", "models"))
    parser.add_argument("--n_layer", type=int, help="keep only this many of the model's layers")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--sequence_length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up; fewer moved "
                        "from run to run more (bench/README.md, 'huge pages without asking')")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--optimizer", default="adam", choices=training.OPTIMIZERS)
    parser.add_argument("--memory_saving_gradients", action="store_true")
    parser.add_argument("--xla", type=lambda v: {"true": True, "false": False}[v.lower()], default=None,
                        help="true/false: compile the forward and backward pass with XLA (default: fast.train_with_xla)")
    parser.add_argument("--xla_update", type=lambda v: {"true": True, "false": False}[v.lower()], default=False,
                        help="true/false: compile the optimizer's update with XLA (default: false, fast.FusedAdam)")
    parser.add_argument("--alternate", choices=sorted(ALTERNATES),
                        help="time steps with and without this choice in turns, --repeats times")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of --alternate")
    parser.add_argument("--peer", metavar="PYTHON", help="the peer venv's python: run hf_generate.py train_bench too")
    args = parser.parse_args()
    path = ensure_model(args.models_dir, args.model_name)
    if args.n_layer:  # the model's layer shapes, fewer of them: a model that fits where the whole would not
        path = os.path.join(args.models_dir, f"{args.model_name}-{args.n_layer}-layers")
        if not os.path.isfile(os.path.join(path, "checkpoint")):
            checkpoints.write_checkpoint(path, {**checkpoints.OFFICIAL[args.model_name], "n_layer": args.n_layer})
    print(json.dumps(alternate(path, args) if args.alternate else measure(path, args)), flush=True)
    if args.peer:
        result = peer(args.peer, path, args)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
