"""XLA's compiled programs kept on disk, so that a script's later starts load what an earlier
run compiled instead of compiling it again (bench/bench_startup.py).

TensorFlow's own persistent cache (TF_XLA_FLAGS=--tf_xla_persistent_cache_directory) does the
work, but it is not safe to share as it is: it writes each program straight to its final name,
so a run killed mid-write, or two runs writing at once, leave a torn file, and a torn or foreign
file makes every later compilation that finds it fail. So each process gets a folder of its own:

- `start` makes `run-HOST-PID-...` inside the shared folder, hard-links the shared programs into
  it and points TensorFlow at it;
- at exit, `publish` moves what this run compiled into the shared folder by rename, which is
  atomic: the shared folder only ever holds whole files;
- a later `start` removes the folders of runs that ended without publishing (killed).

The shared folder is one per TensorFlow build and processor, since a program compiled for one is
not valid for another, and is kept under LIMIT bytes, least recently used first. GPT2_XLA_CACHE
names another folder, or 0 turns the cache off.
This file must stay readable by old Pythons, as cli.py, which imports it.
"""
import atexit
import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import socket
import time

ENVIRONMENT = "GPT2_XLA_CACHE"
FLAG = "--tf_xla_persistent_cache_directory"
LIMIT = 512 * 2**20  # bytes of programs kept
MIN_FREE = 256 * 2**20  # below this much free disk space, no cache: a failed write fails the compilation
STALE = 7 * 24 * 3600  # seconds after which any run's folder is removed, whoever's it was


def default_folder(environ=os.environ):
    """GPT2_XLA_CACHE, or $XDG_CACHE_HOME/gpt2-tf2/xla (~/.cache/gpt2-tf2/xla); None if off."""
    folder = environ.get(ENVIRONMENT)
    if folder is not None:
        return None if folder.strip().lower() in ("", "0", "false", "no", "off") else folder
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "gpt2-tf2", "xla")


def build_identity():
    """A short hash naming this TensorFlow build and this processor."""
    import importlib.metadata  # here: cli.py imports this file, and old Pythons lack it (cli.python_problem)
    spec = importlib.util.find_spec("tensorflow")
    versions = []
    for name in ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-intel"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{name}={importlib.metadata.version(name)}")
    identity = "|".join(versions + [str(spec and spec.origin), platform.machine(), cpu_identity()])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def cpu_identity():
    """The processor's model and feature flags (Linux), else what `platform` knows."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    return platform.processor()


def start(environ=os.environ):
    """Points TensorFlow's persistent XLA cache at a new folder of this process's, filled from
    the shared one, and publishes what it adds at exit. Call before TensorFlow first compiles.
    Returns the folder, or None where the cache is off or cannot be used (nothing is said then:
    the cache only saves time)."""
    folder = default_folder(environ)
    if folder is None or FLAG in environ.get("TF_XLA_FLAGS", ""):
        return None
    shared = os.path.join(folder, build_identity())
    try:
        private = open_run(shared)
    except OSError:
        private = None
    if private is None:
        return None
    environ["TF_XLA_FLAGS"] = f"{environ.get('TF_XLA_FLAGS', '')} {FLAG}={private}".strip()
    atexit.register(publish, shared, private)
    return private


def open_run(shared):
    """A new folder of this process's in `shared`, holding links to the shared programs; None
    where the disk is nearly full (TensorFlow fails a compilation whose program it cannot write)."""
    os.makedirs(shared, exist_ok=True)
    if shutil.disk_usage(shared).free < MIN_FREE:
        return None
    remove_stale_runs(shared)
    private = os.path.join(shared, f"run-{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(private)
    link_programs(shared, private)
    return private


def programs(folder):
    """The names of the compiled programs in `folder`."""
    return [name for name in os.listdir(folder) if name.startswith("xla_compile_cache") and name.endswith(".pb")]


def link_programs(shared, private):
    """Hard-links the shared programs into `private`, marking each as just used."""
    for name in programs(shared):
        with contextlib.suppress(OSError):  # removed meanwhile by another run's `prune`
            os.link(os.path.join(shared, name), os.path.join(private, name))
            os.utime(os.path.join(shared, name))


def publish(shared, private):
    """Moves the programs this run compiled (those not linked from `shared`) into `shared`, one
    atomic rename each, then removes `private` and keeps `shared` under LIMIT."""
    with contextlib.suppress(OSError):
        for name in programs(private):
            path = os.path.join(private, name)
            if os.stat(path).st_nlink == 1:
                os.replace(path, os.path.join(shared, name))
    shutil.rmtree(private, ignore_errors=True)
    with contextlib.suppress(OSError):
        prune(shared)


def prune(shared, limit=LIMIT):
    """Removes the least recently used programs until those left take at most `limit` bytes."""
    paths = [os.path.join(shared, name) for name in programs(shared)]
    stats = sorted((stat.st_mtime, stat.st_size, path) for path, stat in zip(paths, map(os.stat, paths)))
    total = sum(size for _, size, _ in stats)
    for _, size, path in stats:
        if total <= limit:
            break
        with contextlib.suppress(OSError):
            os.remove(path)
        total -= size


def remove_stale_runs(shared, now=None):
    """Removes the folders of this host's runs that ended without publishing, and any run's
    folder older than STALE (a host sharing the folder may have gone)."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    for name in os.listdir(shared):
        if not name.startswith("run-"):
            continue
        path = os.path.join(shared, name)
        owner, _, pid = name[len("run-"):].rsplit("-", 1)[0].rpartition("-")
        with contextlib.suppress(OSError):
            if (owner == host and pid.isdigit() and not is_running(int(pid))) or now - os.stat(path).st_mtime > STALE:
                shutil.rmtree(path, ignore_errors=True)


def is_running(pid):
    """Whether a process `pid` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True
