"""train.py end to end on the tiny checkpoint: the run folder is a model in OpenAI's format,
a resume continues exactly, Ctrl-C saves, a NaN keeps the last good save, bad input is one line."""
import errno
import inspect
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf

import checkpoints
import cli
import dataset
import encode
import encoder
import model
import saving
import train as train_script
import training
from helpers import REPO, summaries
from test_scripts import ENV, UNCONDITIONAL

TRAIN = os.path.join(REPO, "src", "train.py")
WORDS = "the cat sat on a mat and then it ran to the big red house where nobody lived".split()


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A small text dataset: two documents in one file."""
    rng = np.random.RandomState(0)
    lines = [" ".join(rng.choice(WORDS, 12)) for _ in range(60)]
    path = tmp_path_factory.mktemp("data") / "data.txt"
    path.write_text("\n".join(lines[:40]) + "<|endoftext|>" + "\n".join(lines[40:]))
    return str(path)


def train(models_dir, model_name, cwd, *flags, timeout=300):
    """train.py's CompletedProcess, run in `cwd` (where samples/ goes), text output."""
    return subprocess.run([sys.executable, TRAIN, "--model_name", model_name, "--models_dir", models_dir,
                           "--sample_every", "0", *flags], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=cwd)


def train_here(models_dir, model_name, **changes):
    """train_model's run in this process (the command line's part is test_a_bad_flag_is_one_line's)."""
    train_script.train_model(**{**flags(model_name=model_name, models_dir=models_dir, sample_every=0), **changes})


def weights(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) >= 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1]


def test_the_run_folder_is_a_model_that_the_scripts_and_tf1_read(models_dir, tiny_model, text, tmp_path):
    result = train(models_dir, tiny_model, tmp_path, "--dataset", text, "--steps", "3", "--batch_size", "2",
                   "--sequence_length", "32", "--sample_every", "2", "--sample_length", "8", "--save_every", "2",
                   "--val_every", "3", "--val_batch_count", "2", "--seed", "1")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "checkpoint" / "run1"
    assert {"checkpoint", "hparams.json", "encoder.json", "vocab.bpe", "model-3.index",
            "model-3.data-00000-of-00001", "model-2.index", "state-3.index"} <= set(os.listdir(run))
    assert model.find_checkpoint(str(run)) == str(run / "model-3")
    assert "SAMPLE 1" in result.stdout and (tmp_path / "samples" / "run1" / "samples-2").exists()
    assert "validation loss" in result.stderr
    steps = {}
    for tag, step, _ in summaries(str(run)):
        steps.setdefault(tag, []).append(step)
    assert steps == {"loss": [1, 2, 3], "learning_rate": [1, 2, 3], "validation_loss": [3], "samples": [2]}
    bar = result.stderr.replace("\r", "\n").splitlines()
    assert any(re.search(r"3/3 .*avg=\d+\.\d{3}, loss=\d+\.\d{3}, tokens_per_s=\d+", line) for line in bar), result.stderr
    hparams = model.load_hparams(str(run))
    model.check_checkpoint(dict(tf.train.list_variables(str(run / "model-3"))), hparams)
    sampled = subprocess.run([sys.executable, UNCONDITIONAL, "--models_dir", str(tmp_path / "checkpoint"),
                              "--model_name", "run1", "--nsamples", "1", "--length", "5", "--seed", "0"],
                             capture_output=True, text=True, timeout=300, env=ENV)
    assert sampled.returncode == 0 and "SAMPLE 1" in sampled.stdout, sampled.stderr
    with tf.Graph().as_default():  # OpenAI's TF1 code: variables by name, restored by a Saver
        variables = [tf.compat.v1.get_variable(name, shape) for name, shape in model.checkpoint_shapes(hparams).items()]
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver(variables).restore(sess, tf.train.latest_checkpoint(str(run)))
            restored = dict(zip(model.checkpoint_shapes(hparams), sess.run(variables)))
    for name, value in weights(str(run / "model-3")).items():
        np.testing.assert_array_equal(restored[name], value)


def test_a_resumed_run_makes_the_updates_of_one_that_never_stopped(models_dir, tiny_model, text, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = dict(dataset=text, batch_size=2, sequence_length=16, accumulate_gradients=2, noise=0.1,
                  checkpoint_dir=str(tmp_path))
    train_here(models_dir, tiny_model, **common, run_name="straight", steps=6, seed=7)
    train_here(models_dir, tiny_model, **common, run_name="resumed", steps=3, seed=7)
    capsys.readouterr()
    train_here(models_dir, tiny_model, **common, run_name="resumed", steps=6)  # the seed comes from the saved state
    assert "at step 3, seed 7" in capsys.readouterr().err
    a, b = weights(str(tmp_path / "straight" / "model-6")), weights(str(tmp_path / "resumed" / "model-6"))
    for name, value in a.items():
        np.testing.assert_array_equal(b[name], value, err_msg=name)
    train_here(models_dir, tiny_model, **common, run_name="resumed", steps=6, seed=7)
    assert "at step 6 already" in capsys.readouterr().err


def test_a_run_started_from_another_runs_save_names_that_save_when_it_is_done(models_dir, tiny_model, text,
                                                                              tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = dict(dataset=text, sequence_length=16, checkpoint_dir=str(tmp_path), steps=2, seed=7)
    train_here(models_dir, tiny_model, **common, run_name="first")
    capsys.readouterr()
    train_here(models_dir, tiny_model, **common, run_name="second", restore_from=str(tmp_path / "first"))
    assert f"{tmp_path / 'first' / 'model-2'} is at step 2 already" in capsys.readouterr().err


def test_ctrl_c_saves_then_exits(models_dir, tiny_model, text, tmp_path):
    process = subprocess.Popen([sys.executable, TRAIN, "--model_name", tiny_model, "--models_dir", models_dir,
                                "--dataset", text, "--sequence_length", "16", "--sample_every", "1",
                                "--sample_length", "2", "--save_every", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "samples" / "run1" / "samples-2").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    steps = [int(name[6:-6]) for name in os.listdir(tmp_path / "checkpoint" / "run1") if name.endswith(".index")
             and name.startswith("model-")]
    assert len(steps) == 1 and steps[0] >= 2
    assert model.find_checkpoint(str(tmp_path / "checkpoint" / "run1")).endswith(f"model-{steps[0]}")


def test_keep_sets_the_saves_the_run_folder_keeps(models_dir, tiny_model, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=3, save_every=1, keep=3)
    assert saving.saved_steps(str(tmp_path / "checkpoint" / "run1")) == [1, 2, 3]


def test_a_full_disk_says_so_and_keeps_the_last_save(models_dir, tiny_model, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write = saving.write_tensors

    def full_at_step_2(prefix, tensors):
        if prefix.endswith("model-2"):  # TensorFlow's ResourceExhaustedError for ENOSPC
            raise tf.errors.ResourceExhaustedError(None, None, f"{prefix}.data-00000-of-00001.tempstate1; No space "
                                                               f"left on device")
        write(prefix, tensors)
    monkeypatch.setattr(saving, "write_tensors", full_at_step_2)
    with pytest.raises(OSError) as e:
        train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=3, save_every=1)
    run = tmp_path / "checkpoint" / "run1"
    assert cli.error_line(e.value) == ("error: the disk holding checkpoint/run1 is full: step 2 is not saved, the "
                                       "save of step 1 is the latest; free space there, or give another "
                                       "--checkpoint_dir")
    assert model.find_checkpoint(str(run)) == str(run / "model-1") and not (run / "model-2.index").exists()
    weights(str(run / "model-1"))


def test_a_full_disk_anywhere_is_not_called_out_of_memory():
    """What TensorFlow writes elsewhere (summaries, an export) reports ENOSPC as ResourceExhaustedError too."""
    def command():
        raise tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2}} /data/run/model-3"
                                                           ".data-00000-of-00001.tempstate5; No space left on "
                                                           "device [Op:SaveV2]")
    with pytest.raises(SystemExit) as e:
        cli.main(command, [])
    assert e.value.code == ("error: the disk holding /data/run is full: /data/run/model-3.data-00000-of-00001."
                            "tempstate5 cannot be written; free space on it")


@pytest.mark.parametrize("filename, line", [
    (None, "error: the disk is full ([Errno 28] No space left on device): free space on it, or send the output "
           "elsewhere"),
    ("/data/out.txt", "error: the disk holding /data is full: /data/out.txt cannot be written; free space on it"),
])
def test_pythons_full_disk_is_one_line_naming_what_it_can(filename, line):
    """A write of Python's (stdout redirected to a full disk, a file) that no command turned into a line of its own."""
    def command():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([filename] if filename else []))
    with pytest.raises(SystemExit) as e:
        cli.main(command, [], tensorflow=False)
    assert e.value.code == line


def saved_steps_on_disk(run_dir):
    """The steps whose weights' .index is in the run folder."""
    return sorted(int(name[6:-6]) for name in os.listdir(run_dir) if re.fullmatch(r"model-\d+\.index", name))


def test_sigterm_sighup_and_ctrl_c_with_the_output_gone_save_then_exit(models_dir, tiny_model, text, tmp_path):
    """SIGTERM (docker stop, Slurm, Kubernetes) and SIGHUP (the terminal closing) save as Ctrl-C
    does; under nohup (SIGHUP ignored) a SIGHUP changes nothing, and the SIGTERM after it saves.
    Ctrl-C under `2>&1 | tee log` ends tee too: the writes that follow find no reader, and must
    not stop the save. The runs at once, to take the time of one."""
    def hangup(disposition):  # the child's SIGHUP as `nohup` leaves it, or as a terminal's child has it
        return lambda: signal.signal(signal.SIGHUP, disposition)

    runs = {}
    for name in ("sigterm", "sigint", "sighup", "nohup"):
        (tmp_path / name).mkdir()
        runs[name] = subprocess.Popen([sys.executable, TRAIN, "--model_name", tiny_model, "--models_dir", models_dir,
                                       "--dataset", text, "--sequence_length", "16", "--sample_every", "1",
                                       "--sample_length", "2", "--save_every", "0"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path / name,
                                      preexec_fn=hangup(signal.SIG_IGN if name == "nohup" else signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not all((tmp_path / name / "samples" / "run1" / "samples-2").exists() for name in runs):
            assert time.monotonic() < deadline and all(run.poll() is None for run in runs.values())
            time.sleep(0.2)
        runs["sigint"].stdout.close()  # tee is gone: nothing reads the pipes
        runs["sigint"].stderr.close()
        runs["sigint"].send_signal(signal.SIGINT)
        runs["sigterm"].send_signal(signal.SIGTERM)
        runs["sighup"].send_signal(signal.SIGHUP)
        runs["nohup"].send_signal(signal.SIGHUP)
        stderr = {name: runs[name].communicate(timeout=120)[1] for name in ("sigterm", "sighup")}
        runs["sigint"].wait(timeout=120)
        samples = len(os.listdir(tmp_path / "nohup" / "samples" / "run1"))
        while len(os.listdir(tmp_path / "nohup" / "samples" / "run1")) < samples + 2:  # it trains on
            assert time.monotonic() < deadline and runs["nohup"].poll() is None
            time.sleep(0.2)
        runs["nohup"].send_signal(signal.SIGTERM)
        stderr["nohup"] = runs["nohup"].communicate(timeout=120)[1]
    finally:
        for run in runs.values():
            run.kill()
    codes = {name: run.returncode for name, run in runs.items()}
    assert codes == {"sigterm": 143, "sigint": 130, "sighup": 129, "nohup": 143}, stderr
    for name, text in stderr.items():
        assert "Traceback" not in text and re.search(r"^saved checkpoint/run1/model-\d+$", text, re.M), (name, text)
    for name in runs:
        run_dir = tmp_path / name / "checkpoint" / "run1"
        steps = saved_steps_on_disk(run_dir)
        assert len(steps) == 1 and steps[0] >= 2, (name, steps)
        assert model.find_checkpoint(str(run_dir)).endswith(f"model-{steps[0]}")


def test_a_run_whose_output_has_no_reader_saves_then_exits_141(models_dir, tiny_model, text, tmp_path, monkeypatch):
    """`train.py | head`: the first sample finds stdout's reader gone; the run saves and stops as
    the scripts do when their reader goes (status 141), rather than lose its steps."""
    monkeypatch.chdir(tmp_path)
    read, write = os.pipe()
    os.close(read)
    monkeypatch.setattr(sys, "stdout", open(write, "w"))
    with pytest.raises(SystemExit) as e:
        train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=20, sample_every=2,
                   sample_length=2)
    assert e.value.code == 141
    assert saved_steps_on_disk(tmp_path / "checkpoint" / "run1") == [2]


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(models_dir, tiny_model, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--dataset", text, "--sequence_length", "16", "--seed", "3"]
    train_here(models_dir, tiny_model, dataset=text, sequence_length=16, seed=3, steps=2)
    blown = train(models_dir, tiny_model, tmp_path, *flags, "--steps", "9", "--learning_rate", "1e30",
                  "--save_every", "1")
    line = one_error_line(blown)
    assert "the loss is nan" in line or "the loss is inf" in line, line
    assert "the checkpoint of step 2 is kept" in line and line.endswith("Lower --learning_rate")  # float32's
    run = tmp_path / "checkpoint" / "run1"
    assert model.find_checkpoint(str(run)) == str(run / "model-2")
    assert all(np.isfinite(value).all() for value in weights(str(run / "model-2")).values())


def test_after_a_nan_loss_a_wider_dtype_is_offered_as_a_new_run():
    import run
    assert run.non_finite_fix("float32") == "Lower --learning_rate"
    assert run.non_finite_fix("bfloat16") == "Lower --learning_rate, or train a new run (--run_name) with --dtype float32"
    assert run.non_finite_fix("float16") == ("Lower --learning_rate, or train a new run (--run_name) with --dtype "
                                             "float32 or bfloat16")


@pytest.fixture(scope="module")
def two_saves(models_dir, tiny_model, text, tmp_path_factory):
    """A run folder holding the saves of steps 1 and 2 (--seed 1, windows of 16)."""
    cwd = tmp_path_factory.mktemp("two_saves")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        train_here(models_dir, tiny_model, dataset=text, sequence_length=16, seed=1, steps=2, save_every=1)
    return cwd / "checkpoint" / "run1"


def damage(run, how):
    """Damages the run folder `run` (its saves of steps 1 and 2) as `how` says."""
    cut = lambda path: os.truncate(path, os.path.getsize(path) // 2)
    if how == "listing gone":
        os.remove(run / "checkpoint")
    elif how == "listing unreadable":
        (run / "checkpoint").write_text("model_checkpoint_path: {{{\n")
    elif how == "weights gone":
        for path in run.glob("model-2.*"):
            path.unlink()
    elif how == "weights cut":
        cut(run / "model-2.data-00000-of-00001")
    elif how == "state cut":
        cut(run / "state-2.data-00000-of-00001")
    elif how == "state index gone":
        os.remove(run / "state-2.index")


LISTING = ("checkpoint/run1 holds the saves of steps 1, 2 but no `checkpoint` file that TensorFlow can read to "
           "list them: resume from one with --restore_from checkpoint/run1/model-2, or start again from the model "
           "with --restore_from fresh (whose saves replace these)")
BEFORE = ("resume from the save before it with --restore_from checkpoint/run1/model-1, or start again from the model "
          "with --restore_from fresh (whose saves replace these)")


@pytest.mark.parametrize("how, restore_from, line", [
    ("listing gone", "latest", LISTING),
    ("listing unreadable", "latest", LISTING),
    ("listing gone", "a save elsewhere", LISTING),  # whose first save would delete these as well
    ("weights gone", "latest", "checkpoint/run1/checkpoint names model-2, whose files are missing: " + BEFORE),
    ("weights cut", "latest", "--restore_from latest: the save checkpoint/run1/model-2 cannot be read ({reason}): "
                              + BEFORE),
    ("state cut", "latest", "--restore_from latest: cannot read checkpoint/run1/state-2 ({reason}): " + BEFORE),
    ("state index gone", "latest", "--restore_from latest: checkpoint/run1/state-2.index is missing: the save's "
                                   "state (step, data position, optimizer) is there in part: " + BEFORE),
])
def test_a_damaged_run_folder_is_refused_and_its_saves_kept(models_dir, tiny_model, text, two_saves, tmp_path,
                                                            monkeypatch, how, restore_from, line):
    """Where a run folder's listing, or its latest save, is damaged, a resume names what to
    resume from instead, and deletes nothing (a save would delete every save not listed)."""
    run = tmp_path / "checkpoint" / "run1"
    shutil.copytree(two_saves, run)
    damage(run, how)
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    monkeypatch.chdir(tmp_path)
    elsewhere = str(two_saves / "model-2") if restore_from == "a save elsewhere" else restore_from
    with pytest.raises((ValueError, OSError)) as e:
        train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=3, restore_from=elsewhere)
    pattern = re.escape("error: " + line).replace(re.escape("{reason}"), "[^()]+")  # TensorFlow's words
    assert re.fullmatch(pattern, cli.error_line(e.value)), cli.error_line(e.value)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_the_save_a_refusal_names_resumes_and_saves_anew(models_dir, tiny_model, text, two_saves, tmp_path,
                                                         monkeypatch, capsys):
    """The latest save cut: resumed from the one before, the run saves its step again, whole,
    and the next resume takes it."""
    run = tmp_path / "checkpoint" / "run1"
    shutil.copytree(two_saves, run)
    damage(run, "weights cut")
    monkeypatch.chdir(tmp_path)
    common = dict(dataset=text, sequence_length=16, seed=1)
    train_here(models_dir, tiny_model, **common, steps=2, restore_from="checkpoint/run1/model-1")
    assert "saved checkpoint/run1/model-2" in capsys.readouterr().err
    assert saving.saved_steps(str(run)) == [1, 2]
    weights(str(run / "model-2"))
    train_here(models_dir, tiny_model, **common, steps=3)
    assert "from checkpoint/run1/model-2 at step 2" in capsys.readouterr().err


def test_a_run_resumes_from_tf1s_listing_or_the_save_it_names(models_dir, tiny_model, text, two_saves, tmp_path,
                                                               monkeypatch, capsys):
    """A listing of absolute paths, as TF1's Saver wrote them, resumes the latest; without a
    listing, the save --restore_from names resumes, and is listed after the others, so that
    the next save keeps it."""
    run = tmp_path / "checkpoint" / "run1"
    shutil.copytree(two_saves, run)
    (run / "checkpoint").write_text(f'model_checkpoint_path: "{run}/model-2"\n'
                                    f'all_model_checkpoint_paths: "{run}/model-1"\n'
                                    f'all_model_checkpoint_paths: "{run}/model-2"\n')
    monkeypatch.chdir(tmp_path)
    common = dict(dataset=text, sequence_length=16, seed=1)
    train_here(models_dir, tiny_model, **common, steps=3)
    assert "from checkpoint/run1/model-2 at step 2" in capsys.readouterr().err
    assert saving.saved_steps(str(run)) == [2, 3]
    os.remove(run / "checkpoint")
    train_here(models_dir, tiny_model, **common, steps=4, restore_from="checkpoint/run1/model-2", keep=3)
    assert "from checkpoint/run1/model-2 at step 2" in capsys.readouterr().err
    assert saving.saved_steps(str(run)) == [3, 2, 4] and saved_steps_on_disk(run) == [2, 3, 4]


def test_a_run_killed_in_its_first_save_starts_again(models_dir, tiny_model, text, tmp_path, monkeypatch):
    run = tmp_path / "checkpoint" / "run1"
    (run / "model-1_temp").mkdir(parents=True)
    (run / "model-1_temp" / "part").write_text("what TensorFlow wrote")
    monkeypatch.chdir(tmp_path)
    train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=1)
    assert saving.saved_steps(str(run)) == [1] and not (run / "model-1_temp").exists()


def test_another_tools_run_folder_goes_on_from_its_step(models_dir, tiny_model, text, two_saves, tmp_path,
                                                        monkeypatch, capsys):
    """model-1 and model-2 without this port's state files, as nshepperd/gpt-2's train.py leaves
    them: the run starts from model-2 at step 2 and names its saves from there; the other
    tool's files stay."""
    run = tmp_path / "checkpoint" / "run1"
    shutil.copytree(two_saves, run)
    for path in run.glob("state-*"):
        path.unlink()
    monkeypatch.chdir(tmp_path)
    train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=3)
    assert "from checkpoint/run1/model-2 at step 2" in capsys.readouterr().err
    assert saving.saved_steps(str(run)) == [2, 3] and saved_steps_on_disk(run) == [1, 2, 3]


def test_samples_that_cannot_be_written_stop_the_run_after_its_save(models_dir, tiny_model, text, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    write = saving.atomic_write

    def full_for_samples(path, text):
        if "samples-" in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, text)
    monkeypatch.setattr(saving, "atomic_write", full_for_samples)
    with pytest.raises(OSError) as e:
        train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=5, sample_every=2,
                   sample_length=4, save_every=0)
    assert cli.error_line(e.value) == ("error: cannot write the samples of step 2 to samples/run1/samples-2 (No space "
                                       "left on device): stopped at step 2, saved in checkpoint/run1; free space on "
                                       "the disk of samples/run1, or sample less (--sample_every)")
    assert saving.saved_steps("checkpoint/run1") == [2]


def test_the_samples_folder_is_made_only_for_samples_and_its_fix_named(models_dir, tiny_model, text, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples").write_text("")  # samples/ cannot be made in this working folder
    train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=1)  # --sample_every 0: none needed
    assert saving.saved_steps("checkpoint/run1") == [1]
    with pytest.raises(PermissionError) as e:
        train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=2, sample_every=1, run_name="run2")
    assert cli.error_line(e.value) == (
        "error: cannot create samples/run2 (Not a directory): run train.py from a folder this user can write "
        "(samples/ goes in the working folder), or sample never (--sample_every 0), or let this user write there")
    assert not os.path.exists("checkpoint/run2")


def test_a_sigterm_while_the_data_loads_stops_as_ctrl_c_and_leaves_no_folders(models_dir, tiny_model, text,
                                                                              tmp_path, monkeypatch):
    """Killed by SIGTERM's default there, the run left its empty folders, and the encoding pool's
    workers printed tracebacks as their parent vanished; now the stop unwinds as Ctrl-C's does."""
    monkeypatch.chdir(tmp_path)

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises in here
        raise AssertionError("the SIGTERM did not stop the loading")
    monkeypatch.setattr(dataset, "load_dataset", terminated)
    with pytest.raises(cli.Stopped) as e:
        train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=1, sample_every=1)
    assert e.value.signum == signal.SIGTERM
    assert os.listdir(tmp_path) == []  # neither checkpoint/run1 nor samples/run1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def stopped():
        raise cli.Stopped(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        cli.main(stopped, [], tensorflow=False)
    assert e.value.code == 143  # as the default's death by SIGTERM


def test_a_stop_while_the_encoding_pool_starts_comes_once_it_has_started():
    """Raised in the middle of a worker's start, it left the worker a truncated pickle and a traceback."""
    reached = []
    with pytest.raises(cli.Stopped):
        with cli.stops_as_ctrl_c(signal.SIGTERM):
            with dataset.signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)
                reached.append(True)
    assert reached == [True] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_stop_held_while_the_encoding_pool_starts_ends_the_pool(enc, monkeypatch):
    class Pool:
        terminated = False

        def __init__(self, *args):
            os.kill(os.getpid(), signal.SIGTERM)  # held: raised once the pool is made

        def terminate(self):
            Pool.terminated = True
    monkeypatch.setattr(dataset.multiprocessing, "get_context", lambda method: types.SimpleNamespace(Pool=Pool))
    with pytest.raises(cli.Stopped), cli.stops_as_ctrl_c(signal.SIGTERM):
        dataset.encode_pieces(enc, ["x" * dataset.PIECE_CHARS] * 2, processes=2)  # two batches: a pool of two
    assert Pool.terminated


def test_a_held_sighup_that_nohup_ignores_hides_no_sigterm_after_it():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with pytest.raises(cli.Stopped) as e, cli.stops_as_ctrl_c(signal.SIGTERM), dataset.signals_held():
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        assert e.value.signum == signal.SIGTERM
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_second_stop_signal_keeps_its_own_exit_status():
    with cli.CtrlC(signal.SIGINT, signal.SIGTERM) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.pressed and stop.signal == signal.SIGTERM
        with pytest.raises(cli.Stopped) as e:  # exits 143, not Ctrl-C's 130
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
    assert e.value.signum == signal.SIGTERM


def test_holding_signals_outside_the_main_thread_holds_nothing():
    """signal.signal raises ValueError there: the encoding of another thread's dataset would fail."""
    import threading
    errors = []

    def encode_elsewhere():
        try:
            with dataset.signals_held():
                pass
        except ValueError as e:
            errors.append(e)
    thread = threading.Thread(target=encode_elsewhere)
    thread.start()
    thread.join()
    assert errors == []


def test_encoding_workers_leave_ctrl_c_and_hangups_to_the_parent_and_obey_sigterm(enc):
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
    try:
        dataset.start_worker(enc)
        assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is handlers[signal.SIGTERM]  # the pool's terminate() sends it
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


@pytest.mark.parametrize("during", ["sample", "validation"])
def test_a_stop_during_a_sample_or_validation_saves_at_once(models_dir, tiny_model, text, tmp_path, monkeypatch,
                                                            during):
    """A stop asked while a sample is made (124M's 1023 tokens outlast docker stop's 10 s on a
    CPU) or the validation runs ends it between two chunks or batches, then saves."""
    import fast
    monkeypatch.chdir(tmp_path)
    made = []
    if during == "sample":
        generate = fast.Sampler.generate

        def stopped_after_a_chunk(self, *args, **kwargs):
            for tokens in generate(self, *args, **kwargs):
                made.append(tokens.shape[1])
                os.kill(os.getpid(), signal.SIGINT)  # cli.CtrlC's: asks the run to stop
                yield tokens
        monkeypatch.setattr(fast.Sampler, "generate", stopped_after_a_chunk)
        changes = dict(sample_every=2, sample_length=60)  # two chunks: the stop comes after the first
    else:
        loss = training.Trainer.loss

        def stopped_after_a_batch(self, windows):
            made.append(len(windows))
            os.kill(os.getpid(), signal.SIGINT)
            return loss(self, windows)
        monkeypatch.setattr(training.Trainer, "loss", stopped_after_a_batch)
        changes = dict(val_every=2, val_batch_count=5, val_batch_size=1)
    with pytest.raises(SystemExit) as e:
        train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=5, save_every=0, **changes)
    assert e.value.code == 130
    import run
    assert made == ([run.SAMPLE_CHUNK] if during == "sample" else [1])  # one chunk of tokens, or one batch: not all
    assert saving.saved_steps("checkpoint/run1") == [2]
    assert not os.path.exists("samples/run1/samples-2")


def test_a_sample_finished_when_the_stop_comes_is_kept(models_dir, tiny_model, text, tmp_path, monkeypatch):
    import fast
    monkeypatch.chdir(tmp_path)
    generate = fast.Sampler.generate

    def stopped_after_each_chunk(self, *args, **kwargs):
        for tokens in generate(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            yield tokens
    monkeypatch.setattr(fast.Sampler, "generate", stopped_after_each_chunk)
    with pytest.raises(SystemExit):
        train_here(models_dir, tiny_model, dataset=text, sequence_length=16, steps=5, save_every=0, sample_every=2,
                   sample_length=20)  # one chunk, done when the stop comes
    assert os.path.exists("samples/run1/samples-2") and saving.saved_steps("checkpoint/run1") == [2]


@pytest.fixture(scope="module")
def other_model(models_dir, vocab_dir):
    """A model of another shape (width 16) beside the tiny one."""
    checkpoints.write_checkpoint(os.path.join(models_dir, "other"), {**checkpoints.TINY, "n_embd": 16}, vocab_dir)
    return "other"


def test_a_model_whose_embedding_is_smaller_than_its_vocabulary_is_named(models_dir, vocab_dir, text, tmp_path,
                                                                         monkeypatch):
    """It was refused as "--n_vocab must cover the encoder's 50257 tokens", a flag train.py has not."""
    monkeypatch.chdir(tmp_path)
    checkpoints.write_checkpoint(str(tmp_path / "models" / "small"), {**checkpoints.TINY, "n_vocab": 1000}, vocab_dir)
    with pytest.raises(ValueError) as e:
        train_here(str(tmp_path / "models"), "small", dataset=text, steps=1)
    assert cli.error_line(e.value) == (
        f"error: {tmp_path / 'models' / 'small' / 'encoder.json'} has token ids up to 50256, but the model has 1000 "
        f"token embeddings (n_vocab in {tmp_path / 'models' / 'small' / 'hparams.json'}): the vocabulary is another "
        "model's; copy the model's own encoder.json and vocab.bpe there")
    assert os.listdir(tmp_path) == ["models"]


def test_weights_that_hold_nan_are_refused_before_training(models_dir, tiny_model, text, tmp_path, monkeypatch):
    """They stopped the first step with a NaN loss and the advice to lower --learning_rate."""
    monkeypatch.chdir(tmp_path)
    path = shutil.copytree(os.path.join(models_dir, tiny_model), str(tmp_path / "models" / "nan"))
    values = weights(os.path.join(path, "model.ckpt"))
    values["model/wpe"][3, 1] = np.inf
    saving.write_tensors(os.path.join(path, "model.ckpt"), {name: tf.constant(v) for name, v in values.items()})
    with pytest.raises(ValueError, match="model.ckpt: model/wpe holds NaN or infinity: the checkpoint is damaged"):
        train_here(str(tmp_path / "models"), "nan", dataset=text, steps=1)
    assert os.listdir(tmp_path) == ["models"]  # no run folder left


@pytest.mark.parametrize("changes, error, message", [
    ({"restore_from": "{tmp}/nowhere"}, FileNotFoundError, "no checkpoint there"),
    ({"restore_from": "{models}/other"}, ValueError, "is not a checkpoint of tiny"),
    ({"checkpoint_dir": "{text}"}, PermissionError, "cannot create"),
    ({"dataset": "{tmp}/*.nothing"}, FileNotFoundError, "*.nothing"),
    ({"sequence_length": 65}, ValueError, "longer than the model's window (n_ctx 64)"),
    ({"val_dataset": "{tmp}/nowhere.txt"}, FileNotFoundError, "--val_dataset: {tmp}/nowhere.txt not found"),
    ({"sample_length": 65}, ValueError, "--sample_length 65 is longer than the model's window (n_ctx 64): use at "
                                        "most 64"),
    ({"top_k": 50258, "steps": 2, "save_every": 1, "sample_every": 2}, ValueError, "--top_k must be at most the vocabulary size 50257"),
])
def test_bad_input_is_refused_before_any_work(models_dir, tiny_model, other_model, text, tmp_path, monkeypatch,
                                              changes, error, message):
    monkeypatch.chdir(tmp_path)
    changes = {name: value.format(tmp=tmp_path, models=models_dir, text=text) if isinstance(value, str) else value
               for name, value in changes.items()}
    with pytest.raises(error, match=re.escape(message.format(tmp=tmp_path))):
        train_here(models_dir, tiny_model, **{"dataset": text, "steps": 1, **changes})
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "samples").exists()  # nor empty folders


def test_a_dataset_shorter_than_the_window_is_one_window(models_dir, tiny_model, tmp_path, monkeypatch, capsys):
    """gpt-2-simple #103: 7 tokens (6 and the file's closing <|endoftext|>), the default
    --sequence_length (the window, 64) and a batch of 2 windows; each window is the whole text,
    and the loss is that of its 6 predictions."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "short.txt").write_text("The cat sat on the mat")
    train_here(models_dir, tiny_model, dataset=str(tmp_path / "short.txt"), steps=1, batch_size=2)
    run = tmp_path / "checkpoint" / "run1"
    assert model.find_checkpoint(str(run)) == str(run / "model-1")
    path = os.path.join(models_dir, tiny_model)
    hparams = model.load_hparams(path)
    tokens = encoder.get_encoder(tiny_model, models_dir).encode("The cat sat on the mat") + [50256]
    expected = training.Trainer(weights(model.find_checkpoint(path)), hparams).loss(np.array([tokens]))
    assert len(tokens) == 7 and f"loss={float(expected):.3f}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["dataset", "val_dataset"])
def test_a_dataset_of_one_token_names_the_flag(models_dir, tiny_model, text, tmp_path, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "one.npz", np.array([5], np.int32))
    with pytest.raises(ValueError, match=re.escape(f"--{flag} {tmp_path / 'one.npz'} holds 1 token: a window needs")):
        train_here(models_dir, tiny_model, **{"dataset": text, "steps": 1, flag: str(tmp_path / "one.npz")})


def test_a_resume_with_another_seed_or_optimizer_is_refused(models_dir, tiny_model, text, tmp_path, monkeypatch):
    """Another optimizer, or Adam over other variables (the embeddings left out), has other
    state: the message names each flag that decides it."""
    monkeypatch.chdir(tmp_path)
    common = dict(dataset=text, sequence_length=16)
    train_here(models_dir, tiny_model, **common, steps=1, seed=1)
    with pytest.raises(ValueError, match="was trained with --seed 1"):
        train_here(models_dir, tiny_model, **common, steps=2, seed=2)
    for change in ({"optimizer": "sgd"}, {"only_train_transformer_layers": True}):
        with pytest.raises(ValueError, match="another optimizer.*--only_train_transformer_layers it was trained with"):
            train_here(models_dir, tiny_model, **common, steps=2, seed=1, **change)


def flags(**changes):
    """train_model's defaults, with changes."""
    defaults = {name: p.default for name, p in inspect.signature(train_script.train_model).parameters.items()}
    return {**defaults, "dataset": "x", **changes}


@pytest.mark.parametrize("changes, message", [
    ({"dataset": None}, "--dataset is needed"),
    ({"optimizer": "adagrad"}, "--optimizer must be adam or sgd"),
    ({"noise": 2}, "--noise must be a number from 0 to 1"),
    ({"sequence_length": 1}, "--sequence_length must be a positive integer >= 2"),
    ({"sample_length": 0}, "--sample_length must be a positive integer or None"),
    ({"learning_rate": -1}, "--learning_rate must be a positive number"),
    ({"batch_size": 0}, "--batch_size must be an integer >= 1"),
    ({"keep": 0}, "--keep must be an integer >= 1"),
    ({"steps": 1.5}, "--steps must be an integer >= 0"),
    ({"seed": 2 ** 63}, "--seed must be an integer from 0 to 2**63 - 1"),
    ({"learning_rate": float("inf")}, "--learning_rate must be a positive number"),
    ({"top_p": 2}, "--top_p must be in (0, 1]"),
    ({"top_p": 0}, "--top_p must be in (0, 1]"),
    ({"dtype": "float8"}, "--dtype must be one of float32, bfloat16, float16"),
])
def test_bad_flags_are_named(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        train_script.check_flags(**flags(**changes))


def test_a_bad_flag_is_one_line(models_dir, tiny_model, tmp_path):
    assert "--noise must be" in one_error_line(train(models_dir, tiny_model, tmp_path, "--dataset", "x", "--noise", "2"))


def test_a_pattern_the_shell_expanded_is_refused_not_taken_for_other_flags():
    """`--dataset ds/*.txt` unquoted: the second file would otherwise become --model_name."""
    with pytest.raises(cli.UsageError, match=re.escape("unexpected argument 'ds/b.txt' after --dataset ds/a.txt: a "
                                                       "flag takes one value (quote")):
        cli.read_flags(train_script.train_model, ["--dataset", "ds/a.txt", "ds/b.txt", "--steps", "3"])


def test_a_pattern_expanded_in_the_first_place_is_refused_not_taken_for_the_model(tmp_path, monkeypatch):
    """`train.py ds/*.txt --steps 3` unquoted: the second file would otherwise become --model_name."""
    monkeypatch.chdir(tmp_path)
    os.mkdir("ds")
    for name in "ab":
        pathlib.Path(f"ds/{name}.txt").write_text("text")
    with pytest.raises(cli.UsageError, match=re.escape("unexpected argument 'ds/b.txt': a second file where --dataset "
                                                       "takes one, 'ds/a.txt' (quote a pattern such as 'data/*.txt' "
                                                       "for the shell to pass it whole); a value for --model_name goes")):
        cli.read_flags(train_script.train_model, ["ds/a.txt", "ds/b.txt", "--steps", "3"])
    # A setting given in its place is still read, a model's folder too, and a file of another
    # folder; and files for two inputs are (encode.py's `in out`).
    os.mkdir("124M")
    pathlib.Path("other.txt").write_text("text")
    for model_name in ("345M", "124M", "other.txt"):
        assert cli.read_flags(train_script.train_model, ["ds/a.txt", model_name, "--steps", "3"]) == {
            "dataset": "ds/a.txt", "model_name": model_name, "steps": "3"}
    assert cli.read_flags(encode.encode, ["ds/a.txt", "ds/b.txt"]) == {"in_text": "ds/a.txt", "out_npz": "ds/b.txt"}
    with pytest.raises(cli.UsageError, match="unexpected argument 'ds/c.txt': a second file where --out_npz"):
        pathlib.Path("ds/c.txt").write_text("text")
        cli.read_flags(encode.encode, ["ds/a.txt", "ds/b.txt", "ds/c.txt"])
