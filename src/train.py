#!/usr/bin/env python3
"""Fine-tunes GPT-2 on your text, reading and writing OpenAI's checkpoint format.

    python3 src/train.py --dataset corpus.txt --model_name 124M --run_name run1 --steps 1000
    python3 src/interactive_conditional_samples.py --models_dir checkpoint --model_name run1

The run's folder CHECKPOINT_DIR/RUN_NAME is a model folder like models/124M (see saving.py),
with the optimizer's state, the step and the data position beside the weights, so that
`--restore_from latest` (the default) continues a run exactly where it stopped.
"""
import math
import os

import cli
from checks import MAX_SEED, is_integer, is_number


def train_model(dataset=None, model_name="124M", models_dir="models", run_name="run1",
               checkpoint_dir="checkpoint", batch_size=1, sequence_length=None, learning_rate=2e-5,
               optimizer="adam", accumulate_gradients=1, memory_saving_gradients=False,
               only_train_transformer_layers=False, noise=0.0, dtype="float32", steps=0,
               sample_every=100, sample_length=None, sample_num=1, top_k=40, top_p=1.0,
               save_every=1000, keep=2, val_dataset=None, val_every=0, val_batch_size=2, val_batch_count=40,
               restore_from="latest", seed=None):
    """Fine-tune a model on a dataset

    :dataset : Text file, folder, glob pattern or .npz of tokens (src/encode.py) to train on.
     In text, <|endoftext|> separates documents, as does the end of each file
    :model_name=124M : String, which model to start from
    :models_dir=models : path to parent folder containing model subfolders
    :run_name=run1 : Name of the run: its checkpoints go to CHECKPOINT_DIR/RUN_NAME, its
     samples to samples/RUN_NAME
    :checkpoint_dir=checkpoint : Folder of the runs' checkpoints
    :batch_size=1 : Windows in each step (on each device, when several train together)
    :sequence_length=None : Tokens in each window; None (default) means the model's window
     (1024 for the released models). A dataset shorter than that is one window
    :learning_rate=2e-5 : Learning rate of the optimizer
    :optimizer=adam : adam, or sgd (plain gradient descent, no momentum)
    :accumulate_gradients=1 : Sum the gradients of this many batches into each step: a step of
     batch_size * accumulate_gradients windows in the memory of batch_size
    :memory_saving_gradients=False : Boolean, recompute each block's activations in the backward
     pass instead of keeping them: less memory, about a third more compute
    :only_train_transformer_layers=False : Boolean, keep the embeddings (wte, wpe) as they are
    :noise=0 : Probability of replacing each input token by a random one (against typos)
    :dtype=float32 : String, compute in float32, bfloat16 or float16 (mixed precision: the
     weights stay float32)
    :steps=0 : Train until this step (counting the steps of the run resumed); 0 trains until Ctrl-C.
     Ctrl-C, SIGTERM (docker stop, Slurm, Kubernetes) or SIGHUP (the terminal closing, unless under nohup)
     saves at the end of the step in progress, then exits
    :sample_every=100 : Print samples every this many steps (0: never)
    :sample_length=None : Tokens in each sample; None (default) means the model's window (n_ctx)
     less one, whatever --sequence_length
    :sample_num=1 : Samples each time
    :top_k=40 : Integer, sample from the k most likely tokens (0: all)
    :top_p=1 : Float in (0, 1], nucleus sampling (1: all)
    :save_every=1000 : Save a checkpoint every this many steps (0: only at the end); Ctrl-C saves too
    :keep=2 : Saves kept in the run folder, the latest ones; older ones are deleted. Each takes 12
     bytes a parameter with Adam (float32 weights, and Adam's two moments), 4 with sgd: with Adam
     1.5 GB for 124M, 4.3 GB for 355M, 9.3 GB for 774M, 18.7 GB for 1558M
    :val_dataset=None : Dataset for the validation loss; None (default) means --dataset
    :val_every=0 : Compute the validation loss every this many steps (0: never)
    :val_batch_size=2 : Windows in each validation batch
    :val_batch_count=40 : Validation batches, the same windows each time
    :restore_from=latest : latest (the run's last checkpoint, or the model when the run has
     none), fresh (the model, at step 0), or the path of a checkpoint or its folder
    :seed=None : Integer seed of the data order, the noise and the samples (None: a new seed,
     which the run keeps when it resumes). Needed when TF_CONFIG names a cluster: every worker
     takes its share of the same windows
    """
    settings = check_flags(**locals())
    import run
    with cli.stops_as_ctrl_c(*cli.stop_signals()):  # while the data loads: its folders and pool go (Run)
        started = run.Run(settings)
    started.train()


def check_flags(**flags):
    """The flags, checked before anything loads; ValueError naming the first bad one."""
    counts = {"batch_size": 1, "accumulate_gradients": 1, "steps": 0, "sample_every": 0, "sample_num": 1,
              "top_k": 0, "save_every": 0, "keep": 1, "val_every": 0, "val_batch_size": 1, "val_batch_count": 1}
    for name, least in counts.items():
        if not is_integer(flags[name]) or flags[name] < least:
            raise ValueError(f"--{name} must be an integer >= {least}. Received: {flags[name]!r}")
    for name in ("sequence_length", "sample_length"):
        if flags[name] is not None and (not is_integer(flags[name]) or flags[name] < 1 + (name == "sequence_length")):
            raise ValueError(f"--{name} must be a positive integer{' >= 2' if name == 'sequence_length' else ''} "
                             f"or None. Received: {flags[name]!r}")
    if not is_number(flags["learning_rate"]) or not 0 < flags["learning_rate"] < math.inf:
        raise ValueError(f"--learning_rate must be a positive number. Received: {flags['learning_rate']!r}")
    if not is_number(flags["top_p"]) or not 0 < flags["top_p"] <= 1:  # before training, not at the first sample
        raise ValueError(f"--top_p must be in (0, 1] (1: no nucleus filter). Received: {flags['top_p']!r}")
    if flags["dtype"] not in cli.DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(cli.DTYPES)}. Received: {flags['dtype']!r}")
    if not is_number(flags["noise"]) or not 0 <= flags["noise"] <= 1:
        raise ValueError(f"--noise must be a number from 0 to 1. Received: {flags['noise']!r}")
    if flags["optimizer"] not in ("adam", "sgd"):
        raise ValueError(f"--optimizer must be adam or sgd. Received: {flags['optimizer']!r}")
    if flags["dataset"] is None:
        raise ValueError("--dataset is needed: a text file, folder, glob pattern or .npz to train on")
    if flags["seed"] is not None and (not is_integer(flags["seed"]) or not 0 <= flags["seed"] <= MAX_SEED):
        raise ValueError(f"--seed must be an integer from 0 to 2**63 - 1. Received: {flags['seed']!r}")
    if flags["seed"] is None and os.environ.get("TF_CONFIG"):
        raise ValueError("--seed is needed when TF_CONFIG names a cluster: each worker takes its replicas' rows "
                         "of the step's windows, which must be the same windows on every worker; give all the "
                         "same --seed")
    flags["models_dir"], flags["checkpoint_dir"] = map(cli.expand_dir, (flags["models_dir"], flags["checkpoint_dir"]))
    return flags


if __name__ == "__main__":
    cli.main(train_model)
