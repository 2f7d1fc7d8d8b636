"""XLA's programs on disk (src/compile_cache.py): each run compiles into a folder of its own and
publishes whole files only, so kills and concurrent runs never leave a torn program where
another run would load it; a script's second start loads what its first compiled."""
import os
import socket
import subprocess
import sys
import time

import pytest

import compile_cache
import logs
from helpers import REPO, speed_tokens

PROGRAM = "xla_compile_cache__1__2__XLA_CPU_JIT.pb"


def write(path, data=b"program"):
    with open(path, "wb") as f:
        f.write(data)


def test_the_folder_is_the_users_cache_unless_named_or_turned_off():
    assert compile_cache.default_folder({}) == os.path.join(
        os.path.expanduser("~"), ".cache", "gpt2-tf2", "xla")
    assert compile_cache.default_folder({"XDG_CACHE_HOME": "/c"}) == "/c/gpt2-tf2/xla"
    assert compile_cache.default_folder({"GPT2_XLA_CACHE": "/x"}) == "/x"
    for off in ("0", "off", "", "false"):
        assert compile_cache.default_folder({"GPT2_XLA_CACHE": off}) is None


def test_start_points_tensorflow_at_a_folder_of_this_run(tmp_path, monkeypatch):
    registered = []
    monkeypatch.setattr(compile_cache.atexit, "register", lambda *args: registered.append(args))
    environ = {"GPT2_XLA_CACHE": str(tmp_path), "TF_XLA_FLAGS": "--tf_xla_auto_jit=0"}
    private = compile_cache.start(environ)
    assert environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={private}"
    shared = os.path.dirname(private)
    assert os.path.dirname(shared) == str(tmp_path) and os.path.basename(shared) == compile_cache.build_identity()
    assert os.path.basename(private).startswith(f"run-{socket.gethostname()}-{os.getpid()}-")
    assert registered == [(compile_cache.publish, shared, private)]
    # A cache directory the user gave TensorFlow is left alone; so is one that is off.
    assert compile_cache.start(dict(environ)) is None
    assert compile_cache.start({"GPT2_XLA_CACHE": "0"}) is None
    assert len(registered) == 1


def test_an_unusable_folder_means_no_cache_and_no_error(tmp_path):
    write(tmp_path / "file")
    environ = {"GPT2_XLA_CACHE": str(tmp_path / "file" / "xla")}
    assert compile_cache.start(environ) is None
    assert "TF_XLA_FLAGS" not in environ


def test_a_run_reads_the_shared_programs_and_publishes_only_its_own(tmp_path):
    shared = str(tmp_path)
    write(os.path.join(shared, PROGRAM), b"old")
    private = compile_cache.open_run(shared)
    assert open(os.path.join(private, PROGRAM), "rb").read() == b"old"  # a link, not a copy
    assert os.stat(os.path.join(private, PROGRAM)).st_ino == os.stat(os.path.join(shared, PROGRAM)).st_ino
    new = "xla_compile_cache__3__4__XLA_CPU_JIT.pb"
    write(os.path.join(private, new), b"new")
    write(os.path.join(private, "unrelated.txt"))
    compile_cache.publish(shared, private)
    assert sorted(os.listdir(shared)) == [PROGRAM, new]
    assert open(os.path.join(shared, new), "rb").read() == b"new"


def test_a_killed_runs_folder_is_removed_and_its_torn_program_never_shared(tmp_path):
    shared = str(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    torn = os.path.join(shared, f"run-{socket.gethostname()}-{dead.pid}-00000000")
    os.mkdir(torn)
    write(os.path.join(torn, PROGRAM), b"tor")
    alive = os.path.join(shared, f"run-{socket.gethostname()}-{os.getpid()}-11111111")
    elsewhere = os.path.join(shared, "run-another-host-7-22222222")
    old = os.path.join(shared, "run-another-host-8-33333333")
    for folder in (alive, elsewhere, old):
        os.mkdir(folder)
    os.utime(old, (time.time() - compile_cache.STALE - 60,) * 2)
    private = compile_cache.open_run(shared)
    assert sorted(os.listdir(shared)) == sorted(os.path.basename(f) for f in (alive, elsewhere, private))
    assert os.listdir(private) == []


def test_prune_keeps_the_most_recently_used_programs_under_the_limit(tmp_path):
    names = [f"xla_compile_cache__{i}__0__XLA_CPU_JIT.pb" for i in range(4)]
    for i, name in enumerate(names):
        write(tmp_path / name, b"x" * 100)
        os.utime(tmp_path / name, (1000 + i,) * 2)
    compile_cache.prune(str(tmp_path), limit=250)
    assert sorted(os.listdir(tmp_path)) == names[2:]


@pytest.fixture(scope="module")
def cached_runs(models_dir, tiny_model, tmp_path_factory):
    """The unconditional script on one fresh cache folder: two runs at once, which both compile
    and publish the same programs, then a run saying which programs it loaded from disk
    (TensorFlow's persistor logs it at verbosity 1). In float16, which takes XLA on every CPU
    (the scripts' float32 may take oneDNN's kernels on one with bfloat16 instructions:
    fast.choices_for)."""
    folder = str(tmp_path_factory.mktemp("xla"))
    environ = {**os.environ, "GPT2_XLA_CACHE": folder, "TF_CPP_MIN_LOG_LEVEL": "0",
               "TF_CPP_VMODULE": "device_executable_persistor=1"}
    command = [sys.executable, os.path.join(REPO, "src", "generate_unconditional_samples.py"),
               "--model_name", tiny_model, "--models_dir", models_dir, "--nsamples", "2",
               "--batch_size", "2", "--length", "5", "--seed", "3", "--top_k", "5", "--dtype", "float16"]
    together = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
                for _ in range(2)]
    return folder, [*map(finished, together), subprocess.run(command, capture_output=True, text=True, env=environ,
                                                             timeout=300)]


def finished(process):
    """The CompletedProcess of a started one."""
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_later_start_loads_the_programs_two_runs_at_once_compiled(cached_runs):
    folder, (first, also_first, later) = cached_runs
    assert all(run.returncode == 0 for run in cached_runs[1]), first.stderr + also_first.stderr + later.stderr
    assert later.stdout == first.stdout == also_first.stdout
    for run in (first, also_first):
        assert "Serializing and saving cache entry: __inference__decode_loop" in run.stderr
        assert "Verifying loaded cache entry: __inference__decode_loop" not in run.stderr
    assert "Verifying loaded cache entry: __inference__decode_loop" in later.stderr
    assert "Serializing and saving cache entry: __inference__decode_loop" not in later.stderr
    [shared] = os.listdir(folder)
    assert os.listdir(os.path.join(folder, shared)) and not any(
        name.startswith("run-") for name in os.listdir(os.path.join(folder, shared)))


def test_the_error_line_of_a_cache_read_counts_as_information():
    line = ("E0000 00:00:1795673917.853639   18208 text_format.cc:430] Error parsing text-format "
            "tensorflow.XlaSerializedCacheEntry: 2:1: Expected identifier, got: 4\n")
    assert [logs.below_level(line, level) for level in range(4)] == [False, True, True, True]
    other = line.replace("tensorflow.XlaSerializedCacheEntry", "tensorflow.GraphDef")
    assert [logs.below_level(other, level) for level in range(4)] == [False, False, False, True]


def test_only_the_first_call_of_each_key_is_held_back(capfd, monkeypatch):
    """What is written to stderr inside a first call is filtered (its info lines dropped at level
    1); inside a later call of the same key it goes out as it is."""
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    info = "I0000 00:00:1795673917.853639   18208 cpu_compiler.cc:1] compiling {}\n"
    first_calls = logs.FirstCalls()
    for key in [(1, 128), (1, 128), (8, 128)]:
        with first_calls(key):
            os.write(2, info.format(key).encode())
    assert capfd.readouterr().err == info.format((1, 128))


@pytest.mark.parametrize("level", [None, "2"], ids=["default", "errors"])
def test_loading_from_the_cache_prints_nothing(models_dir, tiny_model, cached_runs, level):
    # The scripts' default level (3) and 2, errors only, as many users set it: TensorFlow's other
    # error lines (no CUDA driver, say) may show then, but not the one of each cache read.
    folder, _ = cached_runs
    environ = {**os.environ, "GPT2_XLA_CACHE": folder, "TF_CPP_MIN_LOG_LEVEL": level}
    if level is None:
        del environ["TF_CPP_MIN_LOG_LEVEL"]
    result = subprocess.run([sys.executable, os.path.join(REPO, "src", "generate_unconditional_samples.py"),
                             "--model_name", tiny_model, "--models_dir", models_dir, "--nsamples", "2",
                             "--batch_size", "2", "--length", "5", "--seed", "3", "--top_k", "5"],
                            capture_output=True, text=True, env=environ, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "XlaSerializedCacheEntry" not in result.stderr
    if level is None:
        assert speed_tokens(result.stderr) == 2 * 5
