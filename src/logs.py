"""TensorFlow's C++ log lines, held back and filtered.

TF_CPP_MIN_LOG_LEVEL quiets TensorFlow's own C++ logging, but not what XLA, protobuf and the
device libraries log through absl before anything calls absl::InitializeLog(): the devices'
start-up lines, XLA's banner at its first compilation, and a line at each compiled program
loaded from the disk cache (compile_cache.py). `held_back` keeps them out of the output.
This file must stay readable by old Pythons, as cli.py, which imports it.
"""
import contextlib
import os
import re
import sys
import tempfile

LOG_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl's
                      r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) ")  # TensorFlow's own
ABSL_WARNING = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
CACHE_READ = "] Error parsing text-format tensorflow.XlaSerializedCacheEntry:"


def min_log_level():
    """TF_CPP_MIN_LOG_LEVEL as a number: 0 shows info, 1 warnings, 2 errors, 3 fatal errors."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    return int(level) if level.isdigit() else 0


def below_level(line, level):
    """Whether `line` is a C++ log line of a severity below `level` (see min_log_level). The
    error line at each program read from XLA's disk cache counts as information: TensorFlow
    tries the file as text before reading it as the binary it is, and logs the failed try."""
    match = LOG_LINE.match(line)
    if match:
        severity = "I" if CACHE_READ in line else match.group(1) or match.group(2)
        return "IWEF".index(severity) < level
    return level > 0 and line.startswith(ABSL_WARNING)


@contextlib.contextmanager
def held_back():
    """Within the block, what is written to file descriptor 2 goes to a temporary file; at its
    end, all of it but the C++ log lines below TF_CPP_MIN_LOG_LEVEL goes on to stderr."""
    level = min_log_level()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not below_level(line, level)))
            sys.stderr.flush()


class FirstCalls:
    """`held_back` around the first call for each key (a compiled program's shape): the calls
    that compile, when XLA and the disk cache log. Later calls print as they are."""

    def __init__(self):
        self.seen = set()

    def __call__(self, key=None):
        first = key not in self.seen
        self.seen.add(key)
        return held_back() if first else contextlib.nullcontext()
