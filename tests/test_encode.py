"""src/encode.py end to end, run as a user runs it, without TensorFlow: the .npz it writes,
written whole or not at all, and one-line errors."""
import errno
import os
import subprocess
import sys

import numpy as np
import pytest

import cli
import dataset
import encode

from helpers import REPO
ENCODE = os.path.join(REPO, "src", "encode.py")


@pytest.fixture(scope="module")
def run(vocab_dir, no_tensorflow):
    """Runs encode.py with GPT-2's vocabulary (the model folder `vocab_dir`) and these words;
    the CompletedProcess, its output as text."""
    model = ["--model_name", os.path.basename(vocab_dir), "--models_dir", os.path.dirname(vocab_dir)]
    return lambda *words, cwd=None: subprocess.run([sys.executable, ENCODE, *model, *words], capture_output=True,
                                                   text=True, timeout=300, env=no_tensorflow, cwd=cwd)


def test_round_trip_through_the_npz(run, enc, tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("First document.\n\nStill it<|endoftext|>Second ☃\n", encoding="utf-8")
    (data / "sub" / "b.txt").write_text("Third", encoding="utf-8")
    out = tmp_path / "data.npz"
    result = run(str(data), str(out))
    assert (result.returncode, result.stderr) == (0, "")  # TensorFlow never loaded: its import fails here
    from_text = dataset.load_dataset(enc, str(data), n_vocab=50257)
    assert result.stdout == f"wrote 3 documents, {len(from_text)} tokens (1 array) to {out}\n"
    assert (dataset.load_dataset(enc, str(out), n_vocab=50257) == from_text).all()
    with np.load(out) as npz:  # the two short files in one array (--combine), as nshepperd/gpt-2's train.py needs
        assert [npz[name].dtype for name in npz.files] == [np.int32]
    assert sorted(os.listdir(tmp_path)) == ["data", "data.npz"]  # no temporary file left
    result = run(str(data), str(tmp_path / "each.npz"), "--combine", "0")
    assert result.stdout.endswith("(2 arrays) to " + str(tmp_path / "each.npz") + "\n"), result.stderr
    assert (dataset.load_dataset(enc, str(tmp_path / "each.npz"), n_vocab=50257) == from_text).all()


def test_an_output_inside_the_folder_encoded_is_not_read_as_input_again(run, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("One document, twice encoded.", encoding="utf-8")
    first = run(str(data), str(data / "out.npz"))
    second = run(str(data), str(data / "out.npz"))  # its first output is in the folder now
    assert first.returncode == second.returncode == 0, second.stderr
    assert second.stdout == first.stdout and first.stdout.startswith("wrote 1 document, ")


def test_a_file_named_as_input_is_read_though_it_is_the_output_too(run, tmp_path):
    """Written whole or not at all, an .npz can be rewritten onto itself (as int32, compressed)."""
    np.savez(tmp_path / "in.npz", np.array([1, 2], np.int64), np.array([3], np.int64))
    result = run(str(tmp_path / "in.npz"), str(tmp_path / "in.npz"))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "in.npz") as npz:
        assert [(npz[name].tolist(), npz[name].dtype) for name in npz.files] == [([1, 2], np.int32), ([3], np.int32)]


def test_an_npz_is_written_again_as_it_was(run, tmp_path):
    arrays = [np.array([1, 2, 50256], np.int64), np.array([7], np.int64)]
    np.savez_compressed(tmp_path / "in.npz", *arrays)
    assert run(str(tmp_path / "in.npz"), str(tmp_path / "out.npz")).returncode == 0
    with np.load(tmp_path / "out.npz") as npz:
        assert [npz[name].tolist() for name in npz.files] == [[1, 2, 50256], [7]]


@pytest.mark.parametrize("files, words, line", [
    ({}, ["missing", "out.npz"], "error: missing not found: give a text file, a folder"),
    ({"a.txt": "a"}, ["*.md", "out.npz"], "error: *.md matches no files"),
    ({"empty/.keep": ""}, ["empty", "out.npz"], "error: empty is a folder with no files"),
    ({"a.txt": " \n"}, ["a.txt", "out.npz"], "error: a.txt holds no text"),
    ({"a.txt": b"ok\xff"}, ["a.txt", "out.npz"], "error: a.txt is not UTF-8 text (invalid start byte at byte 2)"),
    ({"a.npz": b"junk"}, ["a.npz", "out.npz"], "error: a.npz is not a .npz"),
    ({"a.npz": np.array([1.5])}, ["a.npz", "out.npz"], "error: a.npz: array 'arr_0' holds float64, not token ids"),
    ({"a.npz": np.array([[1]])}, ["a.npz", "out.npz"], "error: a.npz: array 'arr_0' has shape (1, 1)"),
    ({"a.npz": np.array([60000])}, ["a.npz", "out.npz"], "error: a.npz: array 'arr_0' holds ids from 60000 to 60000"),
    ({"a.txt": "a"}, ["a.txt", "out"], "error: out does not end in .npz"),
    ({"a.txt": "a"}, ["a.txt", "nofolder/out.npz"], "error: nofolder is not a folder"),
    ({"a.txt": "a", "out.npz/x": ""}, ["a.txt", "out.npz"], "error: out.npz is a folder: name the .npz file"),
    ({"a.txt": "a"}, ["a.txt", "out.npz", "--combine", "-1"], "error: --combine must be an integer >= 0"),
])
def test_bad_input_is_one_line_and_exit_1(run, tmp_path, files, words, line):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, np.ndarray):
            np.savez(tmp_path / name, content)
        else:
            (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    before = sorted(os.listdir(tmp_path))
    result = run(*words, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert sorted(os.listdir(tmp_path)) == before  # no output, and no temporary file


def test_a_missing_model_says_how_to_download_it_or_that_it_is_not_released(run, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    result = run("a.txt", "out.npz", "--model_name", "nomodel", cwd=tmp_path)
    assert result.returncode == 1
    assert ("nomodel/encoder.json not found; nomodel is none of the released models (124M, 355M, 774M, 1558M), "
            "which download_model.py fetches: give the --models_dir and --model_name of your model's folder"
            in result.stderr)
    result = run("a.txt", "out.npz", "--model_name", "355M", "--models_dir", "nowhere", cwd=tmp_path)
    assert ("355M/encoder.json not found; download it with `python3 download_model.py 355M --models_dir nowhere`"
            in result.stderr)


def test_an_unwritable_folder_is_one_line_before_any_work(tmp_path, monkeypatch):
    # os.access, not chmod: root, who runs some CI, may write to any folder
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError) as e:
        encode.check_out(str(tmp_path / "out.npz"))
    assert cli.error_line(e.value) == f"error: {tmp_path} is not writable by this user: write the .npz elsewhere"


@pytest.mark.parametrize("words, code, line", [
    (["--encoding", "utf-8", "a", "b.npz"], 2, "error: unknown flag --encoding: the flags are --in_text, --out_npz"),
    (["a.txt"], 2, "error: OUT.npz is missing: encode.py DATASET OUT.npz"),
])
def test_a_command_line_that_cannot_be_read_exits_2(run, words, code, line):
    result = run(*words)
    assert result.returncode == code and result.stderr.startswith(line) and result.stderr.count("\n") == 1


def test_help_before_anything_loads(run):
    result = run("--help")
    text = result.stdout + result.stderr  # fire's help goes to stderr when stdout is not a terminal
    assert result.returncode == 0 and "--in_text" in text and "--out_npz" in text


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_a_failure_or_ctrl_c_while_writing_leaves_neither_file(tmp_path, monkeypatch, error):
    def interrupted(file, *arrays):
        file.write(b"part of a file")
        raise error
    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(error):
        encode.write_npz(str(tmp_path / "out.npz"), [np.arange(3)])
    assert os.listdir(tmp_path) == []


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(file, *arrays):
        file.write(b"part of a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "savez_compressed", no_space)
    out = str(tmp_path / "out.npz")
    with pytest.raises(OSError) as e:
        encode.write_npz(out, [np.arange(3)])
    assert cli.error_line(e.value) == (f"error: the disk holding {tmp_path} is full: {out} is not written; free space "
                                       "there, or write it elsewhere")
    assert os.listdir(tmp_path) == []
