"""Where a downloaded model lives, the command that downloads (or repairs) it, writing a
folder whole or not at all, and saying so when the disk is full."""
import contextlib
import errno
import os
import re
import shlex
import shutil
import socket
import tempfile


RELEASED = ("124M", "355M", "774M", "1558M")  # the models download_model.py fetches (its MODELS)


def how_to_get(model_name, models_dir="models"):
    """What to do about a model missing from models_dir: download it, where it is a released one.

    >>> how_to_get("124M")
    'download it with `python3 download_model.py 124M`'
    """
    if str(model_name) in RELEASED:
        return f"download it with `{download_command(model_name, models_dir)}`"
    return (f"{model_name} is none of the released models ({', '.join(RELEASED)}), which download_model.py "
            "fetches: give the --models_dir and --model_name of your model's folder")


def download_command(model_name, models_dir="models"):
    """The command that downloads a model, or repairs a damaged one. download_model.py, which
    runs without src/, builds the same line (its repair_command; tests/test_download.py).

    >>> download_command("124M")
    'python3 download_model.py 124M'
    >>> download_command("355M", "/data/my models")
    "python3 download_model.py 355M --models_dir '/data/my models'"
    """
    words = ["python3", "download_model.py", str(model_name)]
    if os.path.normpath(models_dir) != "models":
        words += ["--models_dir", str(models_dir)]
    return shlex.join(words)


def check_destination(dst, fix="give a destination that does not, or remove it first"):
    """FileExistsError, saying `fix`, if `dst` exists; an OSError naming the reason if no folder
    can be made there (a file on the way, a folder this user cannot write): for a script to call
    before the work whose result goes there."""
    if not str(dst):
        raise ValueError("the destination is an empty path: give the folder to make")
    if os.path.lexists(dst):
        raise FileExistsError(f"{dst} exists: {fix}")
    above = os.path.dirname(os.path.abspath(dst))
    while not os.path.lexists(above):  # the nearest existing path above, which makedirs starts from
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise NotADirectoryError(f"cannot make {dst}: {above} is a file, not a folder; choose another destination")
    if not os.access(above, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot make {dst}: {above} is not writable by this user; choose another "
                              "destination")


@contextlib.contextmanager
def new_folder(dst, fix="give a destination that does not, or remove it first"):
    """A temporary folder beside `dst`, renamed to `dst` when the block ends and removed if it
    fails (Ctrl-C too), with the folders above it that were made for it: `dst` is a whole
    folder, or absent. FileExistsError, saying `fix`, if `dst` exists; see `check_destination`."""
    check_destination(dst, fix)
    parent = os.path.dirname(os.path.abspath(dst))
    made = folders_to_make(parent)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_abandoned(parent, temporary_prefix(dst))
        temporary = tempfile.mkdtemp(prefix=f"{temporary_prefix(dst)}{os.getpid()}-", dir=parent)
    except OSError as e:  # what access() does not foresee: /proc, a full disk
        remove_empty(made)
        raise type(e)(f"cannot make {dst} ({e.strerror}): choose another destination") from None
    try:
        yield temporary
        usual_modes(temporary)
        if os.path.lexists(dst):  # made meanwhile: os.rename would replace an empty folder
            raise FileExistsError(f"{dst} appeared meanwhile: {fix}")
        os.rename(temporary, dst)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        remove_empty(made)
        raise


@contextlib.contextmanager
def removed_if_failed(temporary):
    """A `with` block that writes the file `temporary` and renames it into place: if the block
    fails (a full disk, Ctrl-C), the temporary is removed and the error goes on."""
    try:
        yield temporary
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def folders_to_make(folder):
    """The folders `os.makedirs(folder)` would make, innermost first."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_empty(folders):
    """Removes each of `folders`, in order, that is empty (innermost first: a parent empties after its child)."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # not empty, or gone
            pass


def temporary_prefix(dst):
    """The start of the names of `new_folder`'s temporaries for `dst`, on this machine; the
    process's id follows."""
    return f".{os.path.basename(os.path.abspath(dst))}.tmp-{socket.gethostname()}-"


def remove_abandoned(parent, prefix):
    """Removes the temporaries in `parent` (named `prefix`, a process id, a dash) whose process
    is gone: what a killed run (SIGKILL, a power cut) left. A live process's are kept, and other
    machines' (another host name) are never touched."""
    for name in os.listdir(parent):
        found = re.fullmatch(re.escape(prefix) + r"(\d+)-[^-]+", name)  # mkdtemp's suffix has no dash
        if found and not process_alive(int(found.group(1))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def process_alive(pid):
    """Whether a process with this id runs on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's; no process id at all: not ours to judge
        return True
    return True


def usual_modes(folder):
    """Gives `folder` and what it holds the modes the umask gives new ones: mkdtemp makes a
    private folder, and safetensors private files."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):  # the files written directly in it; folders below are the umask's
        path = os.path.join(folder, name)
        os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, and a full quota, which reads the same to its user


def is_disk_full(error):
    """Whether `error` is a write that found no room: an OSError ENOSPC or EDQUOT, or TensorFlow's
    ResourceExhaustedError for them, which names the file and says `os.strerror`'s text (where
    a MemoryError-like "out of memory" would otherwise be said)."""
    return getattr(error, "errno", None) in NO_SPACE or any(os.strerror(code) in str(error) for code in NO_SPACE)


def unwritten_file(error):
    """The file a disk-full `error` of TensorFlow's names ("PATH; No space left on device"), or None."""
    no_space = "|".join(re.escape(os.strerror(code)) for code in NO_SPACE)
    # The path from the line's start, after the "{{function_node ...}} " eager ops put first: a
    # path may hold spaces.
    text = re.sub(r"^\{\{.*?\}\}\s*", "", str(error), flags=re.M)
    found = re.search(rf"^(.+?); (?:{no_space})", text, re.M)
    return found.group(1) if found else None


@contextlib.contextmanager
def disk_full_said(where, what):
    """A `with` block whose write that finds the disk full (`is_disk_full`: Python's OSError, or
    TensorFlow's ResourceExhaustedError) raises `disk_full(where, what)` instead."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise disk_full(where, what) from None


def disk_full(where, what):
    """The OSError (errno ENOSPC) saying that the disk holding the folder `where` is full, and `what`
    follows from it (what was not written, what is kept, how to make room)."""
    error = OSError(f"the disk holding {where} is full: {what}")
    error.errno = errno.ENOSPC
    return error
