"""What the command-line scripts share: their flags, read as python-fire reads them and checked
before anything loads; loading a model by name; printing samples; one-line errors.

TensorFlow is imported only by the functions that need it, so that `--help` and a mistyped flag
are answered at once, and `main` starts TensorFlow with its C++ start-up lines held back.
This file must stay readable by old Pythons, to tell their users which ones to use.
"""
import codecs
import contextlib
import difflib
import inspect
import keyword
import math
import os
import random
import re
import signal
import sys
import time

import compile_cache
import logs
import paths
import stopping
from checks import MAX_SEED, is_integer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's own C++ logging: fatal errors only

PYTHONS = ((3, 10), (3, 13))  # the oldest and newest Python tested (README.md, Set up)
DTYPES = ("float32", "bfloat16", "float16")
REQUIREMENTS = {"tensorflow", "numpy", "fire", "regex", "requests", "tqdm", "safetensors"}  # top-level modules
TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")


# --- The command line -------------------------------------------------------------------------

class UsageError(ValueError):
    """A command line that cannot be read (an unknown flag, a flag without its value, a bad
    boolean): `main` says so in one line and exits with status 2, as argparse does."""


def python_problem(version=None):
    """The line saying this Python is not one the scripts run on; None if it is."""
    major, minor = tuple(version or sys.version_info)[:2]
    if PYTHONS[0] <= (major, minor) <= PYTHONS[1]:
        return None
    (low_major, low_minor), (high_major, high_minor) = PYTHONS
    return (f"error: this is Python {major}.{minor}; the scripts run on Python {low_major}.{low_minor} to "
            f"{high_major}.{high_minor}, for which TensorFlow 2.20 is built: make the virtual environment "
            "with one of those (README.md, Set up)")


def is_flag(word):
    """Whether python-fire reads `word` as a flag: `--name` or `-x...`, not `-1` or `-.5`."""
    return word.startswith("--") or re.match(r"-[a-zA-Z]", word) is not None


def flag(name):
    """The flag of a parameter: `--length`; `--from` for `from_`, a keyword's parameter."""
    return "--" + (name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name)


def parameter_named(key, word, parameters):
    """The parameter a flag names: its whole name, or a unique initial (`-l` for --length).
    A Python keyword names the parameter of that name with a `_` after it (PEP 8's spelling):
    `--from` is `from_`."""
    if keyword.iskeyword(key) and key + "_" in parameters:
        return key + "_"
    if key in parameters:
        return key
    initials = [name for name in parameters if len(key) == 1 and name[0] == key]
    if len(initials) == 1:
        return initials[0]
    flag_word = word.partition("=")[0]
    if initials:
        raise UsageError(f"{flag_word} is ambiguous: write {' or '.join(map(flag, initials))}")
    near = [name for name in parameters if name.startswith(key)]
    near += [name for name in difflib.get_close_matches(key, parameters, n=3, cutoff=0.6) if name not in near]
    if near:
        raise UsageError(f"unknown flag {flag_word}: did you mean {' or '.join(map(flag, near))}?")
    raise UsageError(f"unknown flag {flag_word}: the flags are {', '.join(map(flag, parameters))}")


def boolean(name, value):
    """A boolean flag's value: True/False, or true/false, yes/no, 1/0 in any case."""
    if isinstance(value, bool):
        return value
    if value.lower() in TRUE + FALSE:
        return value.lower() in TRUE
    raise UsageError(f"--{name} must be true or false (or yes/no, 1/0; --{name} alone means true, "
                     f"--no{name} false). Received: {value!r}")


def read_flags(command, words):
    """The command line `words` -> {parameter: value} for `command`, read as python-fire reads
    it: `--name value`, `--name=value`, `-n value` for a unique initial, `-` for `_`, bare
    values for the parameters not named, in order. Values stay strings for fire to parse, but
    for booleans (a bool default): `--flag`, `--noflag`, or true/false, yes/no, 1/0, which
    fire would take as strings, all true. UsageError for what fire would have found only after
    running the command, or never: an unknown flag, a value too many, a flag without a value, a
    bare value right after `--name value` that would fill a parameter with a default (a setting,
    not an input left unnamed such as encode.py's files: a second value for `name`, more likely,
    from an unquoted pattern the shell expanded into several), or a bare file that would fill a
    setting after a bare file of the same folder that filled an input (a parameter whose default
    is None): the same pattern, in the first place. Bare values for settings come before the
    flags, or with their flags.
    A flag whose default is a tuple or list may be repeated: its values, in order, as a list.
    """
    parameters = inspect.signature(command).parameters
    booleans = {name for name, parameter in parameters.items() if isinstance(parameter.default, bool)}
    repeated = {name for name, parameter in parameters.items() if isinstance(parameter.default, (tuple, list))}
    values, loose, words = {}, [], list(words)
    given = None  # (name, value) of a flag just read as two words, which a bare word may follow
    while words:
        word = words.pop(0)
        if not is_flag(word):
            loose.append((word, given))
            continue
        given = None
        key, equals, value = word.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not equals and key.startswith("no") and key[2:] in booleans and key not in parameters:
            values[key[2:]] = False
            continue
        name = parameter_named(key, word, parameters)
        if not equals:
            if words and not is_flag(words[0]):
                value = words.pop(0)
                given = name, value
            elif name in booleans:
                value = True
            else:
                raise UsageError(f"{flag(name)} needs a value: {flag(name)} VALUE")
        values[name] = values.get(name, []) + [value] if name in repeated else value
    previous = None  # (name, value) of the bare word before, where it filled an input
    for word, after in loose:
        free = [name for name in parameters if name not in values]
        if not free:
            raise UsageError(f"unexpected argument {word!r}: every flag has a value already (--help lists them)")
        setting = parameters[free[0]].default is not None  # not an input left out
        if setting and after:  # a second value for the flag
            raise UsageError(f"unexpected argument {word!r} after {flag(after[0])} {after[1]}: a flag takes one "
                             "value (quote a value with spaces, or a pattern such as 'data/*.txt', for the shell to "
                             f"pass it whole); a value for {flag(free[0])} goes with its flag, or before the flags")
        if setting and previous and expanded_together(previous[1], word):
            raise UsageError(f"unexpected argument {word!r}: a second file where {flag(previous[0])} takes one, "
                             f"{previous[1]!r} (quote a pattern such as 'data/*.txt' for the shell to pass it whole); "
                             f"a value for {flag(free[0])} goes with its flag")
        previous = None if setting else (free[0], word)
        values[free[0]] = [word] if free[0] in repeated else word
    return {name: boolean(name, value) if name in booleans else value for name, value in values.items()}


def expanded_together(first, second):
    """Whether two words could be one pattern the shell expanded: files of one folder."""
    return (os.path.isfile(first) and os.path.isfile(second)
            and os.path.dirname(os.path.abspath(first)) == os.path.dirname(os.path.abspath(second)))


def main(command, argv=None, *, tensorflow=True):
    """Runs `command` with the command line's flags (argv, default sys.argv[1:]) through fire.

    The flags are checked first, with nothing loaded: `-h`/`--help` anywhere prints fire's help,
    and a command line `read_flags` cannot read ends in one line. Then TensorFlow starts (unless
    `tensorflow` is False, for a command that does not use it), and
    expected failures end in one line on stderr, not a traceback. Exit status: 1 for an error
    the command reports, 2 for a command line that cannot be read, 130 after Ctrl-C, 141 when
    the output's reader has gone (as for a process that SIGPIPE ends). A script's own command
    line (argv None) may first start again with glibc's huge pages (`restart_with_huge_pages`).
    """
    problem = python_problem()
    if problem:
        sys.exit(problem)
    own_command_line = argv is None  # a script run, not a test calling main in its own process
    argv = sys.argv[1:] if own_command_line else list(argv)
    name = os.path.basename(sys.argv[0])
    out_of_memory = (MemoryError,)
    try:
        import fire
        if "-h" in argv or "--help" in argv:
            fire.Fire(command, ["--", "--help"], name=name)
        words, fire_flags = (argv[:argv.index("--")], argv[argv.index("--"):]) if "--" in argv else (argv, [])
        values = read_flags(command, words)
        if tensorflow:
            check_settings()
            if own_command_line:
                restart_with_huge_pages()
            out_of_memory += (start_tensorflow().errors.ResourceExhaustedError,)
        fire.Fire(command, [f"--{flag}={value}" for flag, value in values.items()] + fire_flags, name=name)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in REQUIREMENTS:
            raise
        sys.exit(f"error: {e} in {sys.executable}: install the requirements (pip install -r requirements.txt)")
    except out_of_memory as e:
        if paths.is_disk_full(e):  # TensorFlow's file writes report ENOSPC as ResourceExhaustedError
            sys.exit(disk_full_line(e))
        sys.exit(out_of_memory_line(command, e if isinstance(e, MemoryError) else None))
    except BrokenPipeError:  # the reader went away (`| head`): stop as quietly as `yes | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush has nowhere to go
        sys.exit(141)
    except (ValueError, OSError) as e:
        if isinstance(e, OSError) and e.strerror and paths.is_disk_full(e):  # Python's own, not a line of ours
            sys.exit(disk_full_line(e))
        sys.exit(error_line(e))
    except KeyboardInterrupt as e:
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))  # 130 for Ctrl-C, 143 for a SIGTERM (`Stopped`)


def error_line(error):
    """The one line that reports an expected error; an argument's name becomes its flag, and so
    do the names of the others it mentions (checks.bad_argument)."""
    text = str(error)
    for name in getattr(error, "mentions", ()):
        text = re.sub(rf"(?<![\w-]){re.escape(name)}\b", flag(name), text)
    return f"error: {'--' if getattr(error, 'argument', None) else ''}{text}"


def disk_full_line(error):
    """The line for a write (TensorFlow's, or Python's OSError) that found the disk full, naming
    the file and its folder where the error does; else the output (stdout redirected to a file)."""
    file = paths.unwritten_file(error) or getattr(error, "filename", None)
    if file is None:
        return f"error: the disk is full ({str(error).splitlines()[0]}): free space on it, or send the output elsewhere"
    return f"error: the disk holding {os.path.dirname(file) or '.'} is full: {file} cannot be written; free space on it"


def out_of_memory_line(command, error=None):
    """What to lower when a run does not fit in memory, among the command's flags; with what
    a MemoryError says it needed. --dtype bfloat16 is named unless the error says it would not
    fit either (`sampling_choices`' `bfloat16_fits`)."""
    has, fixes = inspect.signature(command).parameters, []
    lower = [f"--{name}" for name in ("batch_size", "length") if name in has]
    if lower:
        fixes.append(f"lower {' or '.join(lower)}")
    use = ["a smaller --model_name"] if "model_name" in has else []
    if "dtype" in has and getattr(error, "bfloat16_fits", True):
        use.append("--dtype bfloat16")
    if use:
        fixes.append(f"use {' or '.join(use)}")
    needed = f" ({error})" if error is not None and str(error) else ""
    return f"error: out of memory{needed}: {', or '.join(fixes) or 'free some memory'}"


# --- TensorFlow's start --------------------------------------------------------------------------

# TensorFlow's boolean settings that the commands' kernels read: TensorFlow aborts the process at
# the first kernel that reads one holding anything else than these (tsl's ReadBoolFromEnvVar).
BOOLEAN_SETTINGS = ("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS",)
BOOLEANS = ("0", "1", "false", "true")


def check_settings(environ=os.environ):
    """ValueError where one of BOOLEAN_SETTINGS holds what TensorFlow cannot read."""
    for name in BOOLEAN_SETTINGS:
        value = environ.get(name)
        if value is not None and value.lower() not in BOOLEANS:
            raise ValueError(f"{name}={value!r} is not a setting TensorFlow can read, and it would abort: "
                             f"set it to 1 or 0, or unset it")


HUGE_PAGES = "glibc.malloc.hugetlb=1"


def restart_with_huge_pages(environ=os.environ):
    """Starts this process's command again, in the same process, with GLIBC_TUNABLES=HUGE_PAGES,
    which makes glibc ask Linux for transparent huge pages for its large allocations: TensorFlow's
    tensors and oneDNN's copies of the weights, which sampling reads whole at every token, in 2 MB
    pages rather than 4 KB ones (1.04-1.19x the tokens/s at batch 8 in bfloat16 on a Zen 4, the
    same peak memory: bench/README.md, "huge pages"). glibc reads its settings only as a process
    starts, hence the restart, before TensorFlow loads. Nothing is done where GLIBC_TUNABLES is set
    already (to anything: set it empty to keep the scripts from this), nor where glibc (2.35 or
    later) or Linux gives huge pages to all or none (`huge_pages_possible`), nor where the
    interpreter runs something else than the script (`runs_the_script`)."""
    if "GLIBC_TUNABLES" in environ or not (runs_the_script() and sys.executable and huge_pages_possible()):
        return
    environ["GLIBC_TUNABLES"] = HUGE_PAGES
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # returns only where it fails
    except OSError:
        del environ["GLIBC_TUNABLES"]


def runs_the_script():
    """Whether the interpreter's command line is its options, then this script and its arguments,
    with no debugger or tracer: not `python -c` or a program on stdin, which would not run again,
    nor a program that runs the script itself (`python -m pdb`, IPython's %run), which would."""
    words = len(sys.argv)  # the script and its arguments: the interpreter's last words, if it runs the script
    if len(sys.orig_argv) <= words or sys.orig_argv[-words:] != sys.argv:
        return False
    options = sys.orig_argv[1:-words]
    return (os.path.isfile(sys.argv[0]) and not any(option.startswith(("-m", "-c")) for option in options)
            and sys.gettrace() is None)


def huge_pages_possible(thp_setting="/sys/kernel/mm/transparent_hugepage/enabled"):
    """Whether this is glibc 2.35 or later, which has glibc.malloc.hugetlb, on a Linux that gives
    transparent huge pages to the memory a process asks them for ("always [madvise] never": the
    bracketed one holds). Where it gives them to all memory (`[always]`), glibc has them already;
    where to none (`[never]`), glibc cannot."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"; ValueError on macOS
        with open(thp_setting) as f:
            setting = f.read()
    except (AttributeError, ValueError, OSError):  # no os.confstr on Windows
        return False
    numbers = re.fullmatch(r"glibc (\d+)\.(\d+).*", version)
    return bool(numbers) and tuple(map(int, numbers.groups())) >= (2, 35) and "[madvise]" in setting


def start_tensorflow():
    """Imports TensorFlow, starts its devices and compiles one trivial XLA function, with their
    C++ log lines held back (logs.py), which would otherwise land in the middle of a sample;
    returns the module. XLA's compiled programs are kept on disk for the next start
    (compile_cache.py)."""
    compile_cache.start()
    with logs.held_back():
        import tensorflow as tf
        if os.environ.get("TF_CONFIG"):  # a cluster's strategy must set up the devices before they start (run.py)
            return tf
        tf.config.list_logical_devices()  # the devices start, and log
        tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(0))
    return tf


# --- Models and samples ----------------------------------------------------------------------

def parse_dtype(dtype):
    """'float32', 'bfloat16' or 'float16' -> the tf.DType."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}. Received: {dtype!r}")
    import tensorflow as tf
    return tf.as_dtype(dtype)


def expand_dir(models_dir):
    """--models_dir with `~` and environment variables expanded, as the original's scripts did."""
    return os.path.expanduser(os.path.expandvars(str(models_dir)))


def load_hparams(model_name, models_dir):
    """The hparams of a downloaded model."""
    import model
    return model.load_hparams(model.model_dir(str(model_name), expand_dir(models_dir)))


def report_device():
    """With GPT2_REPORT_DEVICE=1 (the GPU image sets it), says on stderr which device runs the
    model, so that a CUDA set-up TensorFlow cannot use does not fall back to the CPU unseen."""
    if os.environ.get("GPT2_REPORT_DEVICE") != "1":
        return
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "unnamed")
        print(f"running on GPU:0 ({name})", file=sys.stderr)
    elif not tf.test.is_built_with_cuda():
        print("running on the CPU: this TensorFlow is built without CUDA", file=sys.stderr)
    else:
        print("running on the CPU: no GPU visible to TensorFlow; check `docker run --gpus all` "
              "and the NVIDIA driver", file=sys.stderr)


def load(model_name, models_dir, dtype="float32", sampling=None):
    """(encoder, hparams, params) of a downloaded model, weights in `dtype`. The sampling scripts
    give (the rows they sample at a time, the fast path's choices: `sampling_choices`), which set
    the process's threads (fast.set_threads), let oneDNN keep weights converted
    (fast.freeze_weights: the scripts' weights never change) and lay the weights out as a
    fast.Sampler with those choices keeps them (fast.load_params). Scoring and evaluation give
    none: frozen weights would cost them a copy of the weights and win no time (bench/README.md)."""
    import encoder
    import fast
    import model
    dtype = parse_dtype(dtype)
    choices = None  # the layout of the weights: as read, unless a Sampler's
    if sampling is not None:
        batch_size, choices = sampling
        fast.set_threads(choices, batch_size)  # before TensorFlow's runtime starts
        fast.freeze_weights(choices)  # before the first matmul
    report_device()
    model_name, models_dir = str(model_name), expand_dir(models_dir)
    path = model.model_dir(model_name, models_dir)
    enc = encoder.get_encoder(model_name, models_dir)
    hparams = model.load_hparams(path)
    encoder.check_fits(enc, hparams.n_vocab, path)
    return enc, hparams, fast.load_params(model.find_checkpoint(path), hparams, dtype, choices)


def available_memory():
    """Bytes of memory the kernel can give this process without swapping (MemAvailable), or
    None where /proc/meminfo does not say."""
    try:
        with open("/proc/meminfo") as f:
            kib = [int(line.split()[1]) for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        return None
    return kib[0] * 1024 if kib else None


def sampling_memory(hparams, batch_size, positions, dtype, choices=None):
    """Bytes that sampling batch_size rows of `positions` tokens with `choices` (by default
    fast.choices_for theirs) takes, about: the weights and the copies the path makes of them, the
    key/value cache (fast.py), and a step's float32 logits, a few copies of them."""
    import fast
    import model
    dtype = parse_dtype(dtype)
    choices = choices or fast.choices_for(dtype, rows=batch_size)
    weights = sum(math.prod(shape) for shape in model.checkpoint_shapes(hparams).values()) * dtype.size
    # The weights as the decode loop reads them (fast.load_params lays them out as it reads), and
    # where the path lays them out (halves, stacks) or lets oneDNN keep its converted copy
    # of frozen weights, a second copy: the layers cut while their stacks are made, then oneDNN's
    # copy, in part in the memory those leave; and half a copy more, which the allocator holds
    # beyond them: 2.2-2.3 copies at the peak for 1558M in either dtype, 2.6-2.9 for 355M, as
    # measured with TensorFlow's own 0.55 GB (bench/README.md). And wte transposed, beside wte.
    laid_out = choices.column_halves or choices.stacked_layers or choices.frozen_weights
    weights = weights * 5 // 2 if laid_out else weights
    weights += hparams.n_vocab * hparams.n_embd * dtype.size
    cache = 2 * hparams.n_layer * batch_size * fast.cache_size(positions, hparams.n_ctx) * hparams.n_embd
    cache *= fast.cache_dtype_for(dtype, batch_size, choices).size
    cache *= 2 if choices.inplace_cache else 1  # own_cache's copy
    return weights + cache + 4 * batch_size * hparams.n_vocab * 4


def sampling_choices(hparams, batch_size, positions, dtype, available=None):
    """The fast path's choices for sampling batch_size rows of `positions` tokens:
    fast.choices_for(dtype, rows=batch_size), or where the copies of the weights those make would
    not fit in the memory available and XLA's one copy would, XLA's (fast.LEAN). MemoryError where
    neither fits: there, rather than being killed by the kernel without a word, a run says what
    to lower (`main`, `out_of_memory_line`)."""
    import fast
    available = available_memory() if available is None else available
    ways = {choices: sampling_memory(hparams, batch_size, positions, dtype, choices)  # the chosen first
            for choices in (fast.choices_for(parse_dtype(dtype), rows=batch_size), fast.LEAN)}
    for choices, needed in ways.items():
        if available is None or needed <= available:
            return choices
    needed = min(ways.values())
    error = MemoryError(f"a batch of {batch_size} needs about {needed / 2 ** 30:.1f} GiB, "
                        f"{available / 2 ** 30:.1f} GiB is available")
    # Whether --dtype bfloat16 would fit (out_of_memory_line), on XLA's one copy of its weights.
    error.bfloat16_fits = sampling_memory(hparams, batch_size, positions, "bfloat16", fast.LEAN) <= available
    raise error


def check_counts(nsamples, batch_size, *, forever=False):
    """ValueError unless nsamples and batch_size are usable counts."""
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"--batch_size must be a positive integer. Received: {batch_size!r}")
    least = 0 if forever else 1
    if not is_integer(nsamples) or nsamples < least:
        raise ValueError(f"--nsamples must be an integer >= {least}"
                         f"{' (0: until Ctrl-C)' if forever else ''}. Received: {nsamples!r}")


def make_seed(seed):
    """The --seed to use: the given one, or a fresh random one."""
    if seed is None:
        return random.SystemRandom().randrange(2 ** 31)
    if not is_integer(seed) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be an integer from 0 to 2**63 - 1. Received: {seed!r}")
    return seed


def header(number):
    """The original's line above each sample."""
    return "=" * 40 + " SAMPLE " + str(number) + " " + "=" * 40


def stop_signals():
    """The signals that stop a training run as Ctrl-C does, after a save: SIGINT, SIGTERM (what
    `docker stop`, Slurm and Kubernetes send), and SIGHUP (the terminal or the SSH session
    closing) unless it is ignored, as `nohup` asks: that run goes on."""
    hangup = getattr(signal, "SIGHUP", None)  # Windows has none
    if hangup is None or signal.getsignal(hangup) is signal.SIG_IGN:
        return signal.SIGINT, signal.SIGTERM
    return signal.SIGINT, signal.SIGTERM, hangup


class Stopped(KeyboardInterrupt):
    """Signal `signum` (a `stop_signals` one) received where there is nothing to save: it stops
    the process as Ctrl-C does, its cleanups run, and `main` exits with 128 + signum."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stops_as_ctrl_c(*signals):
    """A `with` block in which each of `signals` raises `Stopped`, as Ctrl-C raises
    KeyboardInterrupt, where the default would end the process at once, its cleanups skipped."""
    def stop(signum, frame):
        raise Stopped(signum)
    previous = {number: signal.signal(number, stop) for number in signals if number != signal.SIGINT}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class CtrlC:
    """A `with` block in which Ctrl-C asks the sample in progress to stop: `print_samples`
    checks `.pressed` between tokens and ends the sample cleanly, where KeyboardInterrupt would
    be raised wherever Python happened to be, inside TensorFlow's calls too. A second Ctrl-C
    raises KeyboardInterrupt as usual. `signals` (default SIGINT alone) are the signals that
    count as Ctrl-C: train.py adds `stop_signals`; `.signal` is the first one received."""

    def __init__(self, *signals):
        self.signals = signals or (signal.SIGINT,)

    def __enter__(self):
        self.pressed, self.signal = False, None
        self.previous = {number: signal.signal(number, self.press) for number in self.signals}
        return self

    def press(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signum)  # exits 130, or 143 or 129
        self.pressed, self.signal = True, signum

    def __exit__(self, *exc_info):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class ReaderMayGo:
    """A text stream (sys.stdout, sys.stderr) whose writes are harmless once the reader of its
    pipe has gone: `2>&1 | tee log`, whose tee Ctrl-C ends too. What it is given from then on
    is dropped and `.gone` is set, where BrokenPipeError would be raised at whatever write came
    next, before the work in progress is saved."""

    def __init__(self, stream):
        self.stream, self.gone = stream, False

    def write(self, text):
        self.call(self.stream.write, text)
        return len(text)

    def flush(self):
        self.call(self.stream.flush)

    def call(self, method, *args):
        if self.gone:
            return
        try:
            method(*args)
        except BrokenPipeError:
            self.gone = True
            # what stays in the stream's buffer is flushed at exit: to nowhere, rather than an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the stream's
        return getattr(self.stream, name)


class ReadersMayGo:
    """A `with` block in which sys.stdout and sys.stderr are `ReaderMayGo`s; `.gone` says
    whether either's reader has gone."""

    def __enter__(self):
        self.streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.wrapped = ReaderMayGo(sys.stdout), ReaderMayGo(sys.stderr)
        return self

    @property
    def gone(self):
        return any(stream.gone for stream in self.wrapped)

    def __exit__(self, *exc_info):
        sys.stdout, sys.stderr = self.streams


class Speed:
    """How fast a script sampled, for the line it prints on stderr at the end, as llama.cpp does:
    the tokens `sampler` generated (every row's, fast.Sampler.tokens_generated) over the seconds
    spent in `timed` blocks. The first call of each batch size compiles the decode loop, or
    loads it from XLA's disk cache (compile_cache.py): the line gives the rate without those
    calls too, where there were others."""

    def __init__(self, sampler):
        self.sampler, self.seconds = sampler, 0.0

    @contextlib.contextmanager
    def timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def line(self):
        """'120 tokens generated in 2.41 s: 49.8 tokens/s; 61.0 tokens/s without the first call
        of each batch size (1.10 s), which compiles', or None before any token."""
        tokens = self.sampler.tokens_generated
        if not tokens or not self.seconds:
            return None
        line = f"{tokens:,} tokens generated in {self.seconds:.2f} s: {tokens / self.seconds:.1f} tokens/s"
        first_tokens, first_seconds = self.sampler.compiling_tokens, self.sampler.compiling_seconds
        if not first_tokens:
            return line
        if tokens > first_tokens and self.seconds > first_seconds:
            rate = (tokens - first_tokens) / (self.seconds - first_seconds)
            return (f"{line}; {rate:.1f} tokens/s without the first call of each batch size "
                    f"({first_seconds:.2f} s), which compiles")
        return f"{line}, compiling included (the first call of each batch size compiles)"

    def report(self):
        """Prints `line` on stderr, where it stays apart from the samples on stdout."""
        line = self.line()
        if line:
            print(line, file=sys.stderr, flush=True)


def print_samples(enc, sampler, context, length, *, first_sample, stop=None, ctrl_c=None, **kwargs):
    """Prints samples first_sample + 1 .. with the original's headers, each ended at its first
    stop string (`stop`: a list of them, see stopping.py), which is not printed. A lone sample is
    streamed token by token, never printing what may yet be part of a stop string, and ends
    early once `ctrl_c.pressed` (a CtrlC); a batch is printed when it is done."""
    if len(context) > 1:
        texts = stopping.sample_text(sampler, enc, context, length, stop=stop, first_sample=first_sample, **kwargs)
        for i, text in enumerate(texts):
            print(header(first_sample + i + 1))
            print(text)
        return
    print(header(first_sample + 1), flush=True)
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    stop_text = stopping.StopText(stop)
    for tokens in sampler.generate(context, length, first_sample=first_sample, chunk=1, **kwargs):
        row, ended = stopping.before_end(tokens[0], sampler.end_token)
        print(text.decode(stop_text.feed(enc.decode_bytes(row))), end="", flush=True)
        if ended or stop_text.stopped or (ctrl_c is not None and ctrl_c.pressed):
            break
    print(text.decode(stop_text.finish(), final=True))
