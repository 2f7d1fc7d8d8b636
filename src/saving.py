"""A fine-tuning run's folder: a model folder in OpenAI's layout, plus what resumes training.

    RUN_DIR/checkpoint                    which model-STEP is the latest (TF1's text format)
    RUN_DIR/model-STEP.{index,data-*}     the weights: OpenAI's variable names and shapes
    RUN_DIR/hparams.json, encoder.json, vocab.bpe
    RUN_DIR/state-STEP.{index,data-*}     optimizer variables, step, data position, seed

The sampling scripts, `score.py` and OpenAI's TensorFlow 1 code read RUN_DIR as a model
(`--models_dir CHECKPOINT_DIR --model_name RUN_NAME`). A save writes the new step's files
beside the old ones, then replaces `checkpoint` in one rename: a save cut short leaves the
previous step the latest, whole; after it, every step's files but the kept ones' go, what a
save killed after its listing left too.
"""
import filecmp
import os
import re
import shutil
import tempfile

import tensorflow as tf

import model
import paths
from checks import bad_argument, is_integer

KEEP = 2  # saves kept by default: the latest, and the one before in case the latest turns out bad (a NaN)
STATE = ("step", "position", "seed")  # int64 scalars saved beside the optimizer's variables
MODEL_FILES = ("hparams.json", "encoder.json", "vocab.bpe")
# A step's files, and the temporaries TensorFlow writes them through (NAME.tempstateN, NAME_temp/)
STEP_FILE = re.compile(r"(?:model|state)-(\d+)(?:\.(?:index|data-\d+-of-\d+)(?:\.tempstate\d+)?|_temp)")


def write_tensors(prefix, tensors):
    """Writes {name: tensor} as a name-based checkpoint at `prefix`, as TF1's Saver did."""
    names = list(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.convert_to_tensor(tensors[name]) for name in names])


def read_tensors(prefix, dtypes):
    """{name: tensor} read from the checkpoint at `prefix`, for {name: dtype}."""
    names = list(dtypes)
    values = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                                  dtypes=[dtypes[name] for name in names])
    return dict(zip(names, values))


def atomic_write(path, text):
    """Writes `text` to `path` in one rename: readers see the old file or the new, never half;
    a failed write (a full disk) leaves no temporary file."""
    folder = os.path.dirname(path) or "."
    temporary = tempfile.NamedTemporaryFile("w", dir=folder, prefix=".tmp-", delete=False)
    with paths.removed_if_failed(temporary.name):
        with temporary as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(f.name, 0o666 & ~umask)  # the umask's mode, not the temporary's 0600: others read the run folder too
        os.replace(f.name, path)


def saved_steps(run_dir):
    """The steps RUN_DIR/checkpoint lists, oldest first and the latest last, read as
    `tf.train.latest_checkpoint` reads the file (`model.checkpoint_state`): model-STEP paths
    relative to the folder (as this port writes them) or absolute (as TF1's Saver did). [] without
    the file, or with one TensorFlow cannot read (`Run.start_prefix` then refuses a folder that
    holds saves)."""
    state = model.checkpoint_state(run_dir) if os.path.isdir(run_dir) else None
    if state is None:
        return []
    latest = state.model_checkpoint_path
    listed = [path for path in state.all_model_checkpoint_paths if path != latest] + [latest]
    return list(dict.fromkeys(step for step in (step_of(path, run_dir) for path in listed) if step is not None))


def step_of(prefix, run_dir):
    """K where `prefix` is run_dir's model-K, else None."""
    found = re.fullmatch(r"model-(\d+)", os.path.basename(prefix))
    return int(found.group(1)) if found and same_folder(os.path.dirname(prefix) or ".", run_dir) else None


def same_folder(a, b):
    """Whether paths a and b name one folder."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing
        return os.path.abspath(a) == os.path.abspath(b)


def checkpoint_text(steps):
    """The `checkpoint` file that makes model-{steps[-1]} the latest, with relative paths so
    that the folder can be moved."""
    lines = [f'model_checkpoint_path: "model-{steps[-1]}"']
    return "\n".join(lines + [f'all_model_checkpoint_paths: "model-{step}"' for step in steps]) + "\n"


def copy_model_files(source_dir, run_dir):
    """hparams.json, encoder.json and vocab.bpe from the model trained, where the run folder
    lacks them or holds others (a damaged copy, which the scripts would refuse)."""
    for name in MODEL_FILES:
        source, target = os.path.join(source_dir, name), os.path.join(run_dir, name)
        if not os.path.exists(target) or not filecmp.cmp(source, target, shallow=False):
            with paths.removed_if_failed(os.path.join(run_dir, f".tmp-{name}")) as temporary:
                shutil.copyfile(source, temporary)
                os.replace(temporary, target)


def save(run_dir, step, variables, optimizer_variables, state, keep=KEEP, model_dir=None):
    """Saves step `step` into run_dir: variables {checkpoint name: variable}, the optimizer's
    variables (by position) and state {step, position, seed}, and model_dir's MODEL_FILES the
    first time; keeps the last `keep` saves and deletes every other step's files. On a full
    disk, OSError (errno ENOSPC) saying so, the step's files deleted, the saves listed kept."""
    if not is_integer(keep) or keep < 1:
        raise bad_argument("keep", "must be an integer >= 1 (the saves kept)", keep)
    try:
        if model_dir is not None:
            copy_model_files(model_dir, run_dir)
        steps = write_step(run_dir, step, variables, optimizer_variables, state, keep)
    except (tf.errors.ResourceExhaustedError, OSError) as e:  # TensorFlow's writes say ENOSPC so
        if not paths.is_disk_full(e):
            raise
        if step not in saved_steps(run_dir):
            remove_steps(run_dir, lambda saved: saved == step)
        listed = saved_steps(run_dir)
        earlier = "the earlier save of step" if listed and listed[-1] == step else "the save of step"
        kept = f"{earlier} {listed[-1]} is the latest" if listed else "it holds no save"
        raise paths.disk_full(run_dir, f"step {step} is not saved, {kept}") from None
    # Every step of this port's not listed, not only those the list just dropped: a kill after
    # the listing (or a run that crashed in the middle of a save) left files no list names any
    # more. Another tool's model-K files (nshepperd's, gpt-2-simple's) in the folder stay.
    ours = steps_of_this_port(run_dir)
    remove_steps(run_dir, lambda saved: saved not in steps and saved in ours)


def write_step(run_dir, step, variables, optimizer_variables, state, keep):
    """`save`'s writes: the step's files, then the `checkpoint` file that lists it among the last
    `keep`; returns the steps listed."""
    # A save of this step listed already (--restore_from fresh in a run folder with saves) is
    # unlisted before it is written over, so that a kill never leaves a listed save half written;
    # what a killed save of this step left goes too, TensorFlow's temporaries with it.
    forget_step(run_dir, step)
    remove_steps(run_dir, lambda saved: saved == step)
    # The state first: it marks the step as this port's (`steps_of_this_port`), so that weights a
    # kill leaves without their state are not taken for another tool's and kept for good.
    extra = {f"optimizer/{i}": v for i, v in enumerate(optimizer_variables)}
    extra.update({name: tf.constant(state[name], tf.int64) for name in STATE})
    write_tensors(os.path.join(run_dir, f"state-{step}"), extra)
    write_tensors(os.path.join(run_dir, f"model-{step}"), variables)
    steps = ([s for s in saved_steps(run_dir) if s != step] + [step])[-keep:]
    atomic_write(os.path.join(run_dir, "checkpoint"), checkpoint_text(steps))
    return steps


def list_step(run_dir, step):
    """Makes run_dir's save of `step` the latest that RUN_DIR/checkpoint lists, after the saves it
    lists, or without a listing after the whole saves there (a run resumed from a save the
    listing lacks)."""
    listed = [other for other in saved_steps(run_dir) or whole_saves(run_dir) if other != step]
    atomic_write(os.path.join(run_dir, "checkpoint"), checkpoint_text(listed + [step]))


def forget_step(run_dir, step):
    """Takes a bad save of `step` out of RUN_DIR/checkpoint, which then names the one before
    (or is removed); returns the steps left."""
    steps = saved_steps(run_dir)
    if step in steps:
        steps.remove(step)
        if steps:
            atomic_write(os.path.join(run_dir, "checkpoint"), checkpoint_text(steps))
        else:
            os.remove(os.path.join(run_dir, "checkpoint"))
        remove_steps(run_dir, lambda saved: saved == step)
    return steps


def whole_saves(run_dir):
    """The steps whose weights and state are both in run_dir (their index files), in order."""
    return sorted(step for step in steps_of_this_port(run_dir)
                  if all(os.path.exists(os.path.join(run_dir, f"{kind}-{step}.index")) for kind in ("model", "state")))


def steps_with_weights(run_dir):
    """The steps whose weights are in run_dir (model-K.index), this port's or another tool's, in order."""
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    return sorted(int(found.group(1)) for found in map(re.compile(r"model-(\d+)\.index").fullmatch, names) if found)


def steps_of_this_port(run_dir):
    """The steps in run_dir that a save of this port's wrote, whole or in part: those with a
    state-K file, which `remove_steps` deletes last, or with TensorFlow's temporaries."""
    steps = set()
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
        found = STEP_FILE.fullmatch(name)
        if found and (name.startswith("state-") or name.endswith("_temp") or ".tempstate" in name):
            steps.add(int(found.group(1)))
    return steps


def remove_steps(run_dir, which):
    """Deletes the files of each step for which which(step) is true, and the temporaries that
    TensorFlow writes them through; the state files last, so that a kill in the middle leaves
    the step still marked as this port's (`steps_of_this_port`)."""
    for name in sorted(os.listdir(run_dir), key=lambda name: name.startswith("state-")):
        found = STEP_FILE.fullmatch(name)
        if found and which(int(found.group(1))):
            path = os.path.join(run_dir, name)
            if name.endswith("_temp"):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


class DamagedState(ValueError):
    """A save's state files that are there in part, or that TensorFlow cannot read."""


def read_state(prefix, optimizer_variables):
    """The state saved beside the weights at `prefix` (RUN_DIR/model-STEP), assigned to the
    optimizer's variables; returns {step, position, seed}, or None when there is none (weights
    from elsewhere). ValueError when it belongs to another optimizer or model, DamagedState
    when it is there in part or cannot be read."""
    state_prefix = re.sub(r"model-(\d+)$", r"state-\1", prefix)
    if state_prefix == prefix:
        return None
    if not tf.io.gfile.exists(state_prefix + ".index"):
        if tf.io.gfile.glob(state_prefix + ".data-*"):
            raise DamagedState(f"{state_prefix}.index is missing: the save's state (step, data position, "
                               "optimizer) is there in part")
        return None
    try:
        saved = dict(tf.train.list_variables(state_prefix))
    except (tf.errors.OpError, ValueError) as e:
        raise DamagedState(f"cannot read {state_prefix} ({model.error_reason(e)})") from None
    expected = {f"optimizer/{i}": v for i, v in enumerate(optimizer_variables)}
    if set(saved) != set(expected) | set(STATE) or any(
            list(saved[name]) != list(v.shape) for name, v in expected.items()):
        raise ValueError(f"{state_prefix} holds the state of another optimizer or model: resume with the "
                         "--optimizer, --dtype and --only_train_transformer_layers it was trained with, or use "
                         "--restore_from fresh")
    try:
        values = read_tensors(state_prefix, {**{name: v.dtype for name, v in expected.items()},
                                             **{name: tf.int64 for name in STATE}})
    except tf.errors.OpError as e:
        raise DamagedState(f"cannot read {state_prefix} ({model.error_reason(e)})") from None
    for name, variable in expected.items():
        variable.assign(values[name])
    return {name: int(values[name]) for name in STATE}
