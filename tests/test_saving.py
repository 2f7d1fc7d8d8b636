"""saving.py: a run folder's saves are whole or absent, TF1 reads them, the last KEEP stay."""
import errno
import os

import numpy as np
import pytest
import tensorflow as tf

import saving


def variables(value):
    return {"model/wte": tf.fill([3, 2], float(value)), "model/h0/attn/c_attn/w": tf.fill([1, 2, 6], float(value))}


def optimizer_variables():
    return [tf.Variable(0, dtype=tf.int64), tf.Variable(tf.zeros([3, 2]))]


def save(run_dir, step, **keep):
    saving.save(str(run_dir), step, variables(step), optimizer_variables(),
                {"step": step, "position": 10 * step, "seed": 7}, **keep)


def test_the_checkpoint_file_names_the_latest_save_as_tf1_reads_it(tmp_path):
    save(tmp_path, 1)
    save(tmp_path, 2)
    state = tf.compat.v1.train.get_checkpoint_state(str(tmp_path))
    assert state.model_checkpoint_path.endswith("model-2")
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["model-1", "model-2"]
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
    np.testing.assert_array_equal(reader.get_tensor("model/h0/attn/c_attn/w"), np.full([1, 2, 6], 2.0))


def test_only_the_last_saves_are_kept(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step)
    assert saving.saved_steps(str(tmp_path)) == [2, 3]
    assert not any(name.startswith(("model-1.", "state-1.")) for name in os.listdir(tmp_path))


def test_keep_sets_how_many_saves_stay(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=3)
    assert saving.saved_steps(str(tmp_path)) == [2, 3, 4]
    save(tmp_path, 5, keep=1)
    assert saving.saved_steps(str(tmp_path)) == [5]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model-5.data-00000-of-00001", "model-5.index",
                                            "state-5.data-00000-of-00001", "state-5.index"]
    with pytest.raises(ValueError, match=r"^keep must be an integer >= 1 \(the saves kept\). Received: 0$"):
        save(tmp_path, 6, keep=0)
    assert saving.saved_steps(str(tmp_path)) == [5]


def test_a_save_removes_every_unlisted_steps_files(tmp_path):
    """kill -9 after a save listed its step, before it deleted the steps it unlisted, leaves
    their files (a .data without its .index, an .index without its data) that no list names."""
    save(tmp_path, 3)
    save(tmp_path, 4)
    orphans = ["model-1.data-00000-of-00001", "state-1.index", "model-2.index", "state-2.data-00000-of-00001",
               "model-9.data-00000-of-00001.tempstate12345"]
    for name in orphans:
        (tmp_path / name).write_bytes(b"\0" * 10)
    (tmp_path / "state-8_temp").mkdir()
    kept = ["hparams.json", "model.ckpt.index", "model-best.index", "notes.txt"]  # not a step's files
    # nshepperd's or gpt-2-simple's save of step 1000 in the same folder: no state file, not ours.
    kept += ["model-1000.index", "model-1000.data-00000-of-00001", "model-1000.meta"]
    for name in kept:
        (tmp_path / name).write_text("x")
    save(tmp_path, 5)
    assert saving.saved_steps(str(tmp_path)) == [4, 5]
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["checkpoint"] + [
        f"{kind}-{step}.{part}" for kind in ("model", "state") for step in (4, 5)
        for part in ("index", "data-00000-of-00001")])
    assert saving.read_state(str(tmp_path / "model-4"), optimizer_variables()) == {"step": 4, "position": 40,
                                                                                    "seed": 7}


def test_a_save_cut_short_leaves_the_previous_one_the_latest(tmp_path, monkeypatch):
    save(tmp_path, 1)
    write = saving.write_tensors

    def write_then_fail(prefix, tensors):
        write(prefix, tensors)
        if "state-" in prefix:
            raise KeyboardInterrupt  # killed between the weights and the checkpoint file
    monkeypatch.setattr(saving, "write_tensors", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model-1")
    state = saving.read_state(str(tmp_path / "model-1"), optimizer_variables())
    assert state == {"step": 1, "position": 10, "seed": 7}


@pytest.mark.parametrize("killed_after", ["state-", "model-"])
def test_what_a_save_cut_short_wrote_goes_at_the_next_save(tmp_path, monkeypatch, killed_after):
    """A second Ctrl-C between a save's two writes left model-K alone, which looked like
    another tool's weights and stayed for good; the state, written first, marks it as ours."""
    save(tmp_path, 1)
    write = saving.write_tensors

    def write_then_fail(prefix, tensors):
        write(prefix, tensors)
        if killed_after in prefix:
            raise KeyboardInterrupt
    monkeypatch.setattr(saving, "write_tensors", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2)
    monkeypatch.setattr(saving, "write_tensors", write)
    save(tmp_path, 3)
    assert [name for name in os.listdir(tmp_path) if "-2" in name] == []
    assert saving.saved_steps(str(tmp_path)) == [1, 3]


def test_a_listed_save_written_over_and_cut_short_leaves_the_others_the_latest(tmp_path, monkeypatch):
    save(tmp_path, 1)
    save(tmp_path, 2)  # a run started afresh in this folder now saves step 2 again, and is killed
    write = saving.write_tensors

    def write_then_fail(prefix, tensors):  # not the listed save 2's shapes
        write(prefix, {name: value[:1] if value.shape.rank else value for name, value in tensors.items()})
        if "model-" in prefix:  # the second write
            raise KeyboardInterrupt
    monkeypatch.setattr(saving, "write_tensors", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2)
    assert saving.saved_steps(str(tmp_path)) == [1]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model-1")


def no_space(path):
    """What TensorFlow raises when a write of `path` finds the disk full (ENOSPC)."""
    return tf.errors.ResourceExhaustedError(None, None, f"{path}.tempstate1; No space left on device")


@pytest.mark.parametrize("failing", ["state", "checkpoint file", "model files"])
def test_a_full_disk_says_so_deletes_the_step_and_keeps_the_saves_listed(tmp_path, monkeypatch, failing):
    """A full disk is ENOSPC, not "out of memory" (TensorFlow's ResourceExhaustedError); the
    step's files go, and the latest save before it stays listed and loadable."""
    run, model_dir = tmp_path / "run", tmp_path / "model"
    run.mkdir()
    model_dir.mkdir()
    for name in saving.MODEL_FILES:
        (model_dir / name).write_text(name)
    save(run, 1)  # without the model's files, which the next save copies
    write, fsync = saving.write_tensors, os.fsync

    def full_at_state(prefix, tensors):
        write(prefix, tensors)
        if "state-" in prefix:
            raise no_space(prefix + ".data-00000-of-00001")

    def full_at_fsync(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_at_copy(source, target):
        with open(target, "w") as f:
            f.write("part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
    if failing == "state":
        monkeypatch.setattr(saving, "write_tensors", full_at_state)
    elif failing == "checkpoint file":
        monkeypatch.setattr(saving.os, "fsync", full_at_fsync)
    else:
        monkeypatch.setattr(saving.shutil, "copyfile", full_at_copy)
    with pytest.raises(OSError) as e:
        saving.save(str(run), 2, variables(2), optimizer_variables(), {"step": 2, "position": 20, "seed": 7},
                    model_dir=str(model_dir))
    assert str(e.value) == f"the disk holding {run} is full: step 2 is not saved, the save of step 1 is the latest"
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(saving.os, "fsync", fsync)
    assert sorted(name for name in os.listdir(run) if "-2" in name or name.startswith(".")) == []
    assert tf.train.latest_checkpoint(str(run)).endswith("model-1")
    assert saving.read_state(str(run / "model-1"), optimizer_variables()) == {"step": 1, "position": 10, "seed": 7}


def test_the_state_restores_the_optimizer_and_refuses_another(tmp_path):
    saved = optimizer_variables()
    saved[1].assign(tf.ones([3, 2]))
    saving.save(str(tmp_path), 4, variables(4), saved, {"step": 4, "position": 40, "seed": 9})
    fresh = optimizer_variables()
    assert saving.read_state(str(tmp_path / "model-4"), fresh) == {"step": 4, "position": 40, "seed": 9}
    np.testing.assert_array_equal(fresh[1], np.ones([3, 2]))
    with pytest.raises(ValueError, match="another optimizer or model"):
        saving.read_state(str(tmp_path / "model-4"), [tf.Variable(0, dtype=tf.int64)])
    assert saving.read_state(str(tmp_path / "elsewhere" / "model.ckpt"), fresh) is None


def test_forgetting_a_bad_save_makes_the_one_before_the_latest(tmp_path):
    save(tmp_path, 1)
    save(tmp_path, 2)
    assert saving.forget_step(str(tmp_path), 2) == [1]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model-1")
    assert not (tmp_path / "model-2.index").exists()
    assert saving.forget_step(str(tmp_path), 1) == []
    assert tf.train.latest_checkpoint(str(tmp_path)) is None


def test_a_killed_saves_leftovers_go_when_the_step_is_saved_again(tmp_path):
    save(tmp_path, 1)
    leftover = tmp_path / "model-2.data-00000-of-00001.tempstate3071860897808392044"  # as kill -9 left one
    leftover.write_bytes(b"\0" * 100)
    (tmp_path / "state-2_temp").mkdir()
    save(tmp_path, 2)
    assert not leftover.exists() and not (tmp_path / "state-2_temp").exists()
    assert saving.saved_steps(str(tmp_path)) == [1, 2]


def test_the_checkpoint_file_has_the_umasks_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        save(tmp_path, 1)
    finally:
        os.umask(umask)
    assert (tmp_path / "checkpoint").stat().st_mode & 0o777 == 0o644  # readable by the container's user too


def test_a_damaged_copy_of_the_models_files_is_replaced(tmp_path):
    model_dir, run = tmp_path / "model", tmp_path / "run"
    model_dir.mkdir(), run.mkdir()
    for name in saving.MODEL_FILES:
        (model_dir / name).write_text(f"{name}'s text")
    saving.copy_model_files(str(model_dir), str(run))
    (run / "hparams.json").write_text('{"n_vocab": ')  # cut
    saving.copy_model_files(str(model_dir), str(run))
    assert {name: (run / name).read_text() for name in saving.MODEL_FILES} == {
        name: f"{name}'s text" for name in saving.MODEL_FILES}
    assert sorted(os.listdir(run)) == sorted(saving.MODEL_FILES)
