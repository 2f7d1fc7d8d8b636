"""A fine-tuning run: the data, the weights to start from, and the loop that trains, samples,
validates and saves (train.py's flags; see there).

The data position is the number of windows taken so far: step after step the run takes the
next windows of `dataset.Windows`'s seeded order, so that a run saved at step n and resumed
takes the very windows, and makes the very updates, of a run that never stopped.
"""
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

import cli
import dataset
import encoder
import fast
import logs
import model
import paths
import saving
import training
from checks import MAX_SEED

# The tokens a training sample is made at a time, between which a stop asked ends it: a sample
# of 124M's 1023 tokens on a CPU outlasts the grace a SIGTERM's sender gives (docker stop: 10 s).
SAMPLE_CHUNK = 32


def strategy_from_environment():
    """TensorFlow's strategy for where this process runs: MultiWorkerMirroredStrategy when
    TF_CONFIG names a cluster, MirroredStrategy over several GPUs, else the default (one device).
    Under TF_CONFIG it must come first: it sets up the collective ops, which TensorFlow allows only
    before its devices start (cli.start_tensorflow leaves them to it), so the devices' log lines
    are held back here."""
    if os.environ.get("TF_CONFIG"):
        with logs.held_back():
            return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this process writes checkpoints, samples and summaries: the only one, or the
    cluster's chief (worker 0 where TF_CONFIG names no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


class NonFiniteLoss(ValueError):
    """The loss became NaN or infinite: the run stops without saving the weights it made."""


def non_finite_fix(dtype):
    """What to try after a NaN or infinite loss in a run of `dtype`: a wider dtype only in a new
    run, since a run's saved optimizer state is its dtype's (`saving.read_state` refuses another)."""
    wider = {"float16": "float32 or bfloat16", "bfloat16": "float32"}.get(dtype)
    return "Lower --learning_rate" + (f", or train a new run (--run_name) with --dtype {wider}" if wider else "")


class SamplesNotWritten(OSError):
    """A sample's text could not be printed or written (a full disk): the run saves, then stops;
    `fix` says what to do."""

    def __init__(self, message, fix):
        super().__init__(message)
        self.fix = fix


class Run:
    """One training run; `settings` are train.py's checked flags."""

    def __init__(self, settings):
        self.s = settings
        self.strategy = strategy_from_environment()
        self.chief = is_chief(self.strategy)
        self.model_path = model.model_dir(settings["model_name"], settings["models_dir"])
        self.hparams = model.load_hparams(self.model_path)
        self.enc = encoder.get_encoder(settings["model_name"], settings["models_dir"])
        encoder.check_fits(self.enc, self.hparams.n_vocab, self.model_path)
        self.run_dir = os.path.join(settings["checkpoint_dir"], settings["run_name"])
        self.samples_dir = os.path.join("samples", settings["run_name"])
        self.length = settings["sequence_length"] or self.hparams.n_ctx
        self.first_step = logs.FirstCalls()  # the first step compiles
        if self.length > self.hparams.n_ctx:
            raise ValueError(f"--sequence_length {self.length} is longer than the model's window "
                             f"(n_ctx {self.hparams.n_ctx}): use at most {self.hparams.n_ctx}")
        if (settings["sample_length"] or 0) > self.hparams.n_ctx:  # as the sampling scripts refuse it
            raise ValueError(f"--sample_length {settings['sample_length']} is longer than the model's window "
                             f"(n_ctx {self.hparams.n_ctx}): use at most {self.hparams.n_ctx}")
        if settings["top_k"] > self.hparams.n_vocab:  # refused now, not at the first sample after minutes of training
            raise ValueError(f"--top_k must be at most the vocabulary size {self.hparams.n_vocab}. "
                             f"Received: {settings['top_k']}")
        made = self.check_writable()
        try:
            self.tokens, self.val_tokens = self.load_datasets()
            self.restore()
        except BaseException:  # bad input, Ctrl-C: the folders just made go again
            paths.remove_empty(made)
            raise

    def check_writable(self):
        """Refuses, before any work, a run folder or samples folder this user cannot write (the
        samples folder only where --sample_every asks for samples); returns the folders it made,
        innermost first."""
        made = []
        folders = [(self.run_dir, "choose another --checkpoint_dir or --run_name")]
        if self.s["sample_every"]:
            folders.append((self.samples_dir, "run train.py from a folder this user can write (samples/ goes in the "
                                              "working folder), or sample never (--sample_every 0)"))
        for folder, fix in folders if self.chief else ():
            missing = paths.folders_to_make(folder)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                paths.remove_empty(made)
                raise PermissionError(f"cannot create {folder} ({e.strerror}): {fix}, or let this user write "
                                      "there") from None
            made += missing
            if not os.access(folder, os.W_OK | os.X_OK):
                paths.remove_empty(made)
                raise PermissionError(f"{folder} is not writable: {fix}, or let this user write there "
                                      f"(`chmod -R u+w {folder}`)")
        return made

    def load_datasets(self):
        """The tokens of --dataset and of --val_dataset (--dataset's where it is None)."""
        s, n_vocab = self.s, self.hparams.n_vocab
        tokens = dataset.load_dataset(self.enc, s["dataset"], n_vocab=n_vocab)
        val_tokens = tokens
        if s["val_dataset"] is not None:
            try:
                val_tokens = dataset.load_dataset(self.enc, s["val_dataset"], n_vocab=n_vocab)
            except (ValueError, OSError) as e:  # its lines name a path, not which flag gave it
                raise type(e)(f"--val_dataset: {e}") from None
        for flag, found in (("dataset", tokens), ("val_dataset", val_tokens)):
            if len(found) < 2:  # dataset.Windows would name its own argument, `tokens`, which is no flag
                raise ValueError(f"--{flag} {s[flag]} holds {len(found)} token: a window needs 2 or more "
                                 "(each token is predicted from those before it); give more text")
        return tokens, val_tokens

    def start_prefix(self):
        """The checkpoint to start from, and whether it is a save of a run (with its state)."""
        restore_from = str(self.s["restore_from"])
        listed = saving.saved_steps(self.run_dir)
        if self.chief and not listed and restore_from != "fresh":
            unlisted = saving.whole_saves(self.run_dir)  # which the next save's listing would delete
            if unlisted and saving.step_of(cli.expand_dir(restore_from), self.run_dir) is None:
                steps = f"step{'s' * (len(unlisted) > 1)} {', '.join(map(str, unlisted))}"
                raise FileNotFoundError(f"{self.run_dir} holds the saves of {steps} but no `checkpoint` file that "
                                        f"TensorFlow can read to list them: {self.other_save(None)}")
        if restore_from == "latest" and listed:
            prefix = os.path.join(self.run_dir, f"model-{listed[-1]}")
            if not tf.io.gfile.exists(prefix + ".index"):
                raise FileNotFoundError(f"{os.path.join(self.run_dir, 'checkpoint')} names model-{listed[-1]}, "
                                        f"whose files are missing: {self.other_save(listed[-1])}")
            return prefix, True
        if restore_from in ("latest", "fresh"):
            return model.find_checkpoint(self.model_path), False
        path = cli.expand_dir(restore_from)
        if os.path.isdir(path):
            return model.find_checkpoint(path), True
        if not tf.io.gfile.exists(path + ".index"):
            raise FileNotFoundError(f"--restore_from {restore_from}: no checkpoint there (neither a folder with a "
                                    "`checkpoint` file nor a prefix with a .index file); use latest, fresh or a path")
        return path, True

    def other_save(self, step):
        """What to do when the save of `step` in the run folder (None: its listing) is damaged:
        resume from the latest other save whose weights are there, or start again."""
        others = [other for other in saving.steps_with_weights(self.run_dir) if other != step]
        resume = (f"resume from {'the save before it' if step else 'one'} with --restore_from "
                  f"{os.path.join(self.run_dir, f'model-{others[-1]}')}, or " if others else "")
        return f"{resume}start again from the model with --restore_from fresh (whose saves replace these)"

    def restore(self):
        """Builds the trainer from the starting weights, and the run's state when it has one."""
        prefix, resumed = self.start_prefix()
        step = saving.step_of(prefix, self.run_dir)  # where prefix is a save in the run folder
        try:
            values = model.read_checkpoint(prefix, self.hparams)
        except ValueError as e:
            if isinstance(e, model.UnreadableCheckpoint) and step is not None:
                raise ValueError(f"--restore_from {self.s['restore_from']}: the save {prefix} cannot be read "
                                 f"({e.reason}): {self.other_save(step)}") from None
            raise ValueError(f"--restore_from {self.s['restore_from']}: {prefix} is not a checkpoint of "
                             f"{self.s['model_name']} ({e})") from None
        fast.check_finite(prefix, values)  # else the first step's loss is NaN, and its advice of no use
        s = self.s
        self.trainer = training.Trainer(
            values, self.hparams, optimizer=s["optimizer"], learning_rate=s["learning_rate"], dtype=s["dtype"],
            memory_saving=s["memory_saving_gradients"], noise=s["noise"], strategy=self.strategy,
            only_train_transformer_layers=s["only_train_transformer_layers"])
        try:
            state = saving.read_state(prefix, self.trainer.optimizer.variables) if resumed else None
        except saving.DamagedState as e:
            raise ValueError(f"--restore_from {self.s['restore_from']}: {e}: "
                             f"{self.other_save(step) if step is not None else 'resume from another save'}") from None
        self.trainer.optimizer.learning_rate = s["learning_rate"]  # a resume may change it
        if state and s["seed"] is not None and s["seed"] != state["seed"]:
            raise ValueError(f"--seed {s['seed']}: {prefix} was trained with --seed {state['seed']}; resume "
                             "with that seed (or without --seed), or start again with --restore_from fresh")
        # Another tool's model-K in the run folder (nshepperd's, without our state): the steps go
        # on from K, so that no save of this run takes the name of that tool's earlier ones.
        self.step, self.position = (state["step"], state["position"]) if state else (step or 0, 0)
        self.seed = state["seed"] if state else (s["seed"] if s["seed"] is not None else
                                                 int.from_bytes(os.urandom(8), "big") & MAX_SEED)
        self.saved_step = step  # the run folder's save of this step is the one started from: none to write
        self.restored_from = prefix
        self.windows = dataset.Windows(self.tokens, self.length, self.seed)
        self.val_windows = dataset.Windows(self.val_tokens, self.length, 0)

    # --- The loop ------------------------------------------------------------------------------

    def train(self):
        """Trains until --steps, then saves. Ctrl-C, SIGTERM or SIGHUP (cli.stop_signals) ends the
        step in progress, saves, and exits (status 130, 143 or 129), as does a step that finds
        the output's reader gone (141): the save comes first, whatever stdout and stderr do."""
        s = self.s
        if s["steps"] and self.step >= s["steps"]:
            # restored_from: with --restore_from PATH the step is PATH's, not this run's
            print(f"{self.restored_from} is at step {self.step} already: raise --steps to train on", file=sys.stderr)
            return
        if self.chief and self.saved_step is not None and self.saved_step not in saving.saved_steps(self.run_dir):
            saving.list_step(self.run_dir, self.saved_step)  # started from a save the listing lacks: saves keep it
        print(f"training {s['model_name']} from {self.restored_from} at step {self.step}, seed {self.seed}: "
              f"{len(self.tokens):,} tokens in windows of {self.windows.length}", file=sys.stderr)
        writer = tf.summary.create_file_writer(self.run_dir) if self.chief else tf.summary.create_noop_writer()
        with cli.ReadersMayGo() as output, cli.CtrlC(*cli.stop_signals()) as stop, writer.as_default():
            bar = tqdm(initial=self.step, total=s["steps"] or None, unit="step", file=sys.stderr, dynamic_ncols=True)
            try:
                self.loop(bar, lambda: stop.pressed or output.gone)
            except SamplesNotWritten as e:
                bar.close()
                self.save()
                raise OSError(f"{e}: stopped at step {self.step}, saved in {self.run_dir}; {e.fix}, or sample "
                              "less (--sample_every)") from None
            bar.close()
            self.save()
        if stop.pressed:
            sys.exit(128 + stop.signal)
        if output.gone:
            sys.exit(141)  # as for a process that SIGPIPE ends (cli.main)

    def loop(self, bar, stopping):
        """Steps until --steps or until stopping(), with the progress bar, summaries, samples,
        validation and saves; what a step asks for is skipped once stopping() is true."""
        s, per_step = self.s, self.windows_per_step()
        average, started = Average(), time.perf_counter()
        while not stopping() and (not s["steps"] or self.step < s["steps"]):
            loss = self.train_step(per_step)
            average.add(loss)
            tokens_per_s = (bar.n - bar.initial + 1) * per_step * self.windows.length / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss:.3f}", avg=f"{average.value:.3f}", tokens_per_s=f"{tokens_per_s:.0f}")
            bar.update()
            tf.summary.scalar("loss", loss, self.step)
            tf.summary.scalar("learning_rate", s["learning_rate"], self.step)
            if not stopping():  # the save comes at once: a SIGTERM's sender waits only so long
                self.every(bar, stopping)

    def windows_per_step(self):
        """Windows in one step, over every replica and accumulated batch."""
        return self.s["accumulate_gradients"] * self.s["batch_size"] * self.strategy.num_replicas_in_sync

    def train_step(self, per_step):
        """One update from the next windows; the loss, or NonFiniteLoss (nothing saved)."""
        windows = self.windows.batch(self.position, per_step)  # [per_step, T]
        windows = windows.reshape(self.s["accumulate_gradients"], -1, windows.shape[-1])
        with self.first_step():
            loss = float(self.trainer.step(windows, seed=(self.seed, self.step)))
        if not math.isfinite(loss):  # the weights of this step made it: a save of them is no good either
            last = saving.forget_step(self.run_dir, self.step) if self.chief else []
            kept = f"the checkpoint of step {last[-1]} is kept" if last else "no checkpoint is kept"
            raise NonFiniteLoss(f"the loss is {loss} at step {self.step + 1}: stopped; {kept} in {self.run_dir}. "
                                f"{non_finite_fix(self.s['dtype'])}")
        self.step += 1
        self.position += per_step
        return loss

    def every(self, bar, stopping=lambda: False):
        """Samples, validates and saves on the steps the flags ask for; a sample or validation
        in progress ends, unfinished and unreported, once stopping() is true, so that the save
        comes at once (`loop`)."""
        s = self.s
        if s["sample_every"] and self.step % s["sample_every"] == 0:
            bar.clear()
            self.generate_samples(stopping)
        if s["val_every"] and self.step % s["val_every"] == 0 and not stopping():
            loss = self.validation_loss(stopping)
            if loss is not None:
                tf.summary.scalar("validation_loss", loss, self.step)
                bar.write(f"[step {self.step}] validation loss {loss:.4f}", file=sys.stderr)
        if s["save_every"] and self.step % s["save_every"] == 0:
            self.save()

    def validation_loss(self, stopping=lambda: False):
        """The mean loss of the same --val_batch_count batches each time; None if stopping()
        comes true between two batches."""
        size, losses = self.s["val_batch_size"], []
        for i in range(self.s["val_batch_count"]):
            if stopping():
                return None
            losses.append(float(self.trainer.loss(self.val_windows.batch(i * size, size))))
        return sum(losses) / len(losses)

    def generate_samples(self, stopping=lambda: False):
        """Prints --sample_num samples from <|endoftext|>, and writes them under samples/RUN_NAME;
        made SAMPLE_CHUNK tokens at a time, and dropped if stopping() comes true in between."""
        if not self.chief:
            return
        s, end = self.s, self.enc.encoder["<|endoftext|>"]
        length = s["sample_length"] or self.hparams.n_ctx - 1
        if not hasattr(self, "sampler"):  # reads the variables at each call: samples of the current weights
            self.sampler = fast.Sampler(self.trainer.params, self.hparams, top_k=s["top_k"], top_p=s["top_p"])
        seed = (self.seed + self.step) % (MAX_SEED + 1)
        chunks, made = [], 0
        for tokens in self.sampler.generate([[end]] * s["sample_num"], length, seed=seed, chunk=SAMPLE_CHUNK):
            chunks.append(tokens)
            made += tokens.shape[1]
            if made < length and stopping():  # an unfinished sample is dropped; a finished one is kept
                return
        out = np.concatenate(chunks, axis=1)  # [sample_num, length]
        texts = [self.enc.decode(tokens) for tokens in out]
        text = "".join(f"{'=' * 20} SAMPLE {i + 1} {'=' * 20}\n{t}\n" for i, t in enumerate(texts))
        path = os.path.join(self.samples_dir, f"samples-{self.step}")
        for where, write in (("stdout", lambda: print(f"[step {self.step}]\n{text}", end="", flush=True)),
                             (path, lambda: saving.atomic_write(path, text))):
            try:
                write()
            except OSError as e:  # not a reader gone (cli.ReaderMayGo): a full disk, most likely
                disk = "the disk stdout goes to" if where == "stdout" else f"the disk of {self.samples_dir}"
                fix = f"free space on {disk}" if paths.is_disk_full(e) else f"let this user write to {where}"
                raise SamplesNotWritten(f"cannot write the samples of step {self.step} to {where} "
                                        f"({e.strerror or e})", fix) from None
        tf.summary.text("samples", text, self.step)

    def save(self):
        """Saves the weights and the state of the current step (the chief alone), unless the
        run folder's save of this step is the one it started from or made."""
        if not self.chief or self.step == self.saved_step:
            return
        try:
            saving.save(self.run_dir, self.step, self.trainer.checkpoint_values(), self.trainer.optimizer.variables,
                        {"step": self.step, "position": self.position, "seed": self.seed}, keep=self.s["keep"],
                        model_dir=self.model_path)
        except OSError as e:
            if not paths.is_disk_full(e):
                raise
            # Not "lower --keep": the saves a lower one drops go after the new one is whole.
            raise OSError(f"{e}; free space there, or give another --checkpoint_dir") from None
        self.saved_step = self.step
        print(f"saved {os.path.join(self.run_dir, f'model-{self.step}')}", file=sys.stderr)


class Average:
    """The exponential moving average of the loss over about the last 100 steps, corrected for
    its start at zero."""

    def __init__(self, decay=0.99):
        self.decay, self.total, self.weight = decay, 0.0, 0.0

    def add(self, value):
        self.total = self.decay * self.total + value
        self.weight = self.decay * self.weight + 1

    @property
    def value(self):
        return self.total / self.weight
