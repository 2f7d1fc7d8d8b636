"""paths.new_folder: a destination is whole or absent, and what a killed run left beside it goes."""
import os
import socket
import subprocess
import sys

import pytest

import paths


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_the_folder_appears_whole_and_its_temporary_goes(tmp_path):
    with paths.new_folder(str(tmp_path / "out")) as temporary:
        assert os.path.basename(temporary).startswith(f".out.tmp-{socket.gethostname()}-{os.getpid()}-")
        (tmp_path / temporary / "file").write_text("x")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == ["file"]


def test_a_failure_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with paths.new_folder(str(tmp_path / "out")):
            1 / 0
    assert os.listdir(tmp_path) == []


def test_what_a_killed_run_left_goes_and_nothing_else(tmp_path):
    host = socket.gethostname()
    left = {  # name: kept
        f".out.tmp-{host}-{dead_pid()}-abc": False,  # its process is gone (kill -9)
        f".out.tmp-{host}-{os.getpid()}-def": True,  # a live process writing it now
        f".out.tmp-another-host-{dead_pid()}-ghi": True,  # another machine's, on a shared disk
        f".out.tmp-{host}-2-{dead_pid()}-ghi": True,  # host "{host}-2"'s
        f".other.tmp-{host}-{dead_pid()}-jkl": True,  # another destination's
        ".out.tmp-abc": True,  # not of this naming
        f".out.tmp-{host}-{10 ** 30}-mno": True,  # no process id
    }
    for name in left:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part").write_text("x")
    with paths.new_folder(str(tmp_path / "out")):
        pass
    assert sorted(os.listdir(tmp_path)) == sorted(["out"] + [name for name, kept in left.items() if kept])


def test_the_file_a_full_disk_stopped_is_read_from_tensorflows_message():
    """The whole path, spaces and all, as TensorFlow's writes and its eager ops word it."""
    name = "/data/my run/model-3.data-00000-of-00001.tempstate1"
    assert paths.unwritten_file(f"{name}; No space left on device") == name
    assert paths.unwritten_file(f"{{{{function_node __wrapped__SaveV2}}}} {name}; No space left on device [Op:SaveV2]") == name
    assert paths.unwritten_file("Resource exhausted: OOM when allocating tensor") is None
