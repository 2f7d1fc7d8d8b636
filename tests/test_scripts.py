"""The two sampling scripts end to end on a tiny checkpoint: output format, numbering, seeds,
streaming, Ctrl-C / Ctrl-D, and one-line errors."""
import fcntl
import inspect
import io
import math
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

import checkpoints
import cli
import convert_checkpoint
import encoder
import logs
import fast
import generate_unconditional_samples
import interactive_conditional_samples
import model
import score
import stopping

from helpers import REPO, speed_tokens
UNCONDITIONAL = os.path.join(REPO, "src", "generate_unconditional_samples.py")
INTERACTIVE = os.path.join(REPO, "src", "interactive_conditional_samples.py")
# The scripts' own TensorFlow log level, as a user gets it, whatever the one running the tests.
ENV = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
       "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "UTF-8"}


def command(script, models_dir, model_name, *flags):
    return [sys.executable, script, "--model_name", model_name, "--models_dir", models_dir, *flags]


def run(script, models_dir, model_name, *flags, stdin=b""):
    """The script's CompletedProcess, its output as text; stdin as bytes (or text, sent as UTF-8)."""
    result = subprocess.run(command(script, models_dir, model_name, *flags),
                            input=stdin.encode() if isinstance(stdin, str) else stdin, capture_output=True,
                            timeout=300, env=ENV)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                       result.stderr.decode())


def run_at_once(*runs):
    """The scripts' CompletedProcesses, for runs (script, models_dir, model_name, *flags) started
    together (no stdin): quicker than one after the other (three runs: 20 s against 27 here)."""
    processes = [subprocess.Popen(command(*spec), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=ENV) for spec in runs]
    outputs = [process.communicate(timeout=300) for process in processes]
    return [subprocess.CompletedProcess(process.args, process.returncode, *output)
            for process, output in zip(processes, outputs)]


def samples(stdout):
    """{number: text} from the original's output format."""
    parts = re.split(r"={40} SAMPLE (\d+) ={40}\n", stdout)
    return {int(n): text for n, text in zip(parts[1::2], parts[2::2])}


@pytest.fixture(scope="module")
def tiny(models_dir, tiny_model):
    path = os.path.join(models_dir, tiny_model)
    hparams = model.load_hparams(path)
    return (encoder.get_encoder(tiny_model, models_dir), hparams,
            model.load_params(model.find_checkpoint(path), hparams))


def test_unconditional_numbers_exactly_nsamples_whatever_the_batch(models_dir, tiny_model):
    flags = ["--nsamples", "3", "--length", "8", "--seed", "1", "--top_p", "0.9"]
    outputs = run_at_once(*[(UNCONDITIONAL, models_dir, tiny_model, *flags, "--batch_size", b) for b in ("1", "2", "4")])
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert speed_tokens(result.stderr) == 3 * 8  # and no TensorFlow start-up lines
        assert re.findall(r"SAMPLE (\d+)", result.stdout) == ["1", "2", "3"]
    assert samples(outputs[0].stdout) == samples(outputs[1].stdout) == samples(outputs[2].stdout)
    assert len(set(samples(outputs[0].stdout).values())) == 3


def test_unconditional_greedy_output_is_the_models_argmax(models_dir, tiny_model, tiny):
    enc, hparams, params = tiny
    # The seed does not change a greedy sample; a fixed one keeps the run the same every time.
    result = run(UNCONDITIONAL, models_dir, tiny_model, "--nsamples", "1", "--length", "10", "--top_k", "1",
                 "--seed", "1")
    assert result.returncode == 0, result.stderr
    tokens = np.array([[50256]], np.int32)
    for _ in range(10):
        logits = model.model(params, hparams, tokens)["logits"][0, -1].numpy()
        second, first = np.sort(logits)[-2:]
        assert first - second > 1e-3, "a near-tie, which float rounding in the fast path could turn over"
        tokens = np.concatenate([tokens, [[np.argmax(logits)]]], 1).astype(np.int32)
    assert samples(result.stdout) == {1: enc.decode(tokens[0, 1:]) + "\n"}


def test_unconditional_forever_ends_cleanly_on_ctrl_c(models_dir, tiny_model):
    process = subprocess.Popen([sys.executable, UNCONDITIONAL, "--model_name", tiny_model, "--models_dir", models_dir,
                                "--length", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        headers = 0
        while headers < 3:
            headers += "SAMPLE" in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0 and "Traceback" not in stderr
    assert speed_tokens(stderr) >= 2 * 4  # the first two samples, whole


def test_unconditional_forever_ends_quietly_when_its_reader_goes(models_dir, tiny_model):
    # As in `generate_unconditional_samples.py | head`.
    process = subprocess.Popen([sys.executable, UNCONDITIONAL, "--model_name", tiny_model, "--models_dir", models_dir,
                                "--length", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        assert b"SAMPLE 1" in process.stdout.readline()
        process.stdout.close()
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert (process.returncode, stderr) == (141, b"")


def expected_sample(tiny, prompt, length, seed, number=0):
    enc, hparams, params = tiny
    context = [enc.encode(prompt)]
    out = fast.Sampler(params, hparams).sample(context, length, seed=seed, first_sample=number)
    return enc.decode(out[0, len(context[0]):])


def test_interactive_through_stdin(models_dir, tiny_model, tiny):
    enc = tiny[0]
    long_prompt = "word " * 60
    n = len(enc.encode(long_prompt))
    assert n + 20 - 1 > 64
    latin1 = "caf\u00e9 au lait\n".encode("latin-1")  # not UTF-8: refused, and the next prompt read
    continued = b"Two\\\nlines\\\n\n"  # a line ending in a backslash goes on at the next
    result = run(INTERACTIVE, models_dir, tiny_model, "--length", "20", "--seed", "5", "--nsamples", "2",
                 "--batch_size", "2", stdin=f"\n{long_prompt}\n".encode() + latin1 + b"Hello world\n" + continued)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert speed_tokens(result.stderr) == 2 * 2 * 20
    out = result.stdout
    assert out.count("Model prompt >>> ") == 6 and out.count("             ... ") == 2
    assert "Prompt should not be empty!" in out
    assert "Prompt is not UTF-8 text (byte 0xe9): type or paste it as UTF-8" in out
    assert (f"Prompt too long: {n} tokens and --length 20 need {n + 19} positions, more than the window of 64 (the "
            "last new token needs none); use at most 45 prompt tokens.") in out
    assert out.index("Prompt too long") < out.index("SAMPLE 1")
    assert "=" * 80 in out
    got = samples(out.split("=" * 80)[0])
    assert got == {i + 1: expected_sample(tiny, "Hello world", 20, 5, i) + "\n" for i in range(2)}
    got = samples(out.split("=" * 80)[1])
    assert got == {i + 1: expected_sample(tiny, "Two\nlines\n", 20, 5, i) + "\n" for i in range(2)}


@pytest.fixture
def in_process(monkeypatch):
    """For a script run in this process: TF_ONEDNN_ASSUME_FROZEN_WEIGHTS at 0, so that the script
    (fast.freeze_weights) does not set it for the rest of the suite, which trains tf.Variables
    (refused while it is set); the tokens are the same either way."""
    monkeypatch.setenv(fast.FROZEN_WEIGHTS, "0")


def test_interactive_prompt_file(models_dir, tiny_model, tiny, tmp_path, capsys, in_process):
    """--prompt_file: the file's whole text is the prompt, line breaks and all; its samples are
    printed as for a typed prompt, nothing is asked, and how fast it ran goes to stderr."""
    path = tmp_path / "prompt.txt"
    path.write_text("Two\nlines\n", encoding="utf-8")
    interactive_conditional_samples.interact_model(tiny_model, seed=5, nsamples=2, batch_size=2, length=20,
                                                   models_dir=models_dir, prompt_file=str(path))
    out, err = capsys.readouterr()
    want = "".join(cli.header(i + 1) + "\n" + expected_sample(tiny, "Two\nlines\n", 20, 5, i) + "\n" for i in range(2))
    assert out == want + "=" * 80 + "\n"
    assert speed_tokens(err) == 2 * 20


def test_a_bad_prompt_file_is_named(models_dir, tiny_model, tmp_path, in_process):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (tmp_path / "long.txt").write_text("word " * 60)
    (tmp_path / "huge.txt").write_text("word " * 100)
    for name, error, line in [
            ("huge.txt", ValueError, "--prompt_file {} has 101 tokens, more than the model's window of 64: shorten it"),
            ("absent.txt", FileNotFoundError, "--prompt_file {} cannot be read (No such file or directory)"),
            ("empty.txt", ValueError, "--prompt_file {} is empty: give a file that holds the prompt"),
            ("latin1.txt", ValueError, "--prompt_file {} is not UTF-8 text (byte 0xe9 at 3): save it as UTF-8"),
            ("long.txt", ValueError, "--length and the prompt's 61 tokens need 80 positions, more than the model's "
                                     "window of 64 (the last new token needs none): use at most 4 new tokens or a "
                                     "shorter prompt. Received: 20")]:
        with pytest.raises(error) as e:
            interactive_conditional_samples.interact_model(tiny_model, length=20, models_dir=models_dir,
                                                           prompt_file=str(tmp_path / name))
        assert cli.error_line(e.value) == "error: " + line.format(tmp_path / name)


def test_a_length_too_long_for_a_prompt_file_counts_its_tokens(models_dir, tiny_model, tmp_path, in_process):
    """The check before the weights load took the prompt for 1 token, the shortest one typed."""
    (tmp_path / "p.txt").write_text("The meaning of life is that")  # 6 tokens
    with pytest.raises(ValueError) as e:
        interactive_conditional_samples.interact_model(tiny_model, length=65, models_dir=models_dir,
                                                       prompt_file=str(tmp_path / "p.txt"))
    assert cli.error_line(e.value).startswith("error: --length and the prompt's 6 tokens need 70 positions")


class Terminal:
    """The controlling side of a pseudo-terminal, read up to markers."""

    def __init__(self, fd):
        self.fd, self.pending = fd, b""

    def read_until(self, marker, timeout=120):
        """Everything up to and including `marker`; what came after it is kept for the next call.
        At end of output (the child closed the terminal) returns what there is."""
        deadline = time.time() + timeout
        while marker not in self.pending:
            assert time.time() < deadline, f"no {marker!r} in {self.pending!r}"
            if select.select([self.fd], [], [], 1)[0]:
                try:
                    self.pending += os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    out, self.pending = self.pending, b""
                    return out
        out, _, self.pending = self.pending.partition(marker)
        return out + marker


LEFT = b"\x1b[D"  # the terminal's left arrow key


# In a UTF-8 locale readline drops bytes that are not UTF-8 as they are typed, so only the C
# locale's session, where readline passes them on, can show the script refusing them.
@pytest.mark.parametrize("ending, locale", [(b"\x04", "C.UTF-8"), (b"\x03", "C")], ids=["ctrl-d", "ctrl-c"])
def test_interactive_in_a_terminal(models_dir, tiny_model, tiny, ending, locale):
    fd, terminal = pty.openpty()
    # A line wide enough for the long prompt below: readline then echoes it as typed, where on a
    # narrow one it redraws the wrapped line in pieces that depend on how the input arrives.
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 8000, 0, 0))
    # setsid --ctty makes the terminal the script's controlling one, so Ctrl-C sends SIGINT.
    process = subprocess.Popen(["setsid", "--ctty", sys.executable, INTERACTIVE, "--model_name", tiny_model,
                                "--models_dir", models_dir, "--length", "12", "--seed", "3",
                                "--nsamples", "1000000"],
                               stdin=terminal, stdout=terminal, stderr=terminal,
                               env={**ENV, "TERM": "xterm", "LC_ALL": locale})
    os.close(terminal)
    terminal = Terminal(fd)
    try:
        terminal.read_until(b"Model prompt >>> ")
        # Line editing: the arrow keys move the cursor, they do not insert `^[[D`.
        os.write(fd, "Caf\u00e9 lait".encode() + LEFT * 4 + b"au \n")
        out = terminal.read_until(b" SAMPLE 3 ").decode("utf-8")
        os.write(fd, b"\x03")  # Ctrl-C stops the sample, and the session goes on
        terminal.read_until(b"=" * 80 + b"\r\n")
        terminal.read_until(b"Model prompt >>> ")
        if locale == "C":
            os.write(fd, "caf\u00e9 au lait\n".encode("latin-1"))  # not UTF-8: refused; the session goes on
            refused = terminal.read_until(b"Model prompt >>> ").decode("utf-8", "replace")
            assert "Prompt is not UTF-8 text (byte 0xe9)" in refused
        long_prompt = "word " * 1000  # longer than a terminal's line (4,095 bytes) in canonical mode
        os.write(fd, long_prompt.encode() + b"\n")
        too_long = terminal.read_until(b"Model prompt >>> ").decode("utf-8")
        os.write(fd, ending)
        rest = terminal.read_until(b"\0", timeout=60).decode("utf-8", "replace")
        process.wait(timeout=60)
    finally:
        process.kill()
        os.close(fd)
    assert process.returncode == 0
    assert "Traceback" not in rest
    got = samples(out.replace("\r\n", "\n").split(" SAMPLE 3 ")[0] + " SAMPLE 3 " + "=" * 40 + "\n")
    assert got[1] == expected_sample(tiny, "Caf\u00e9 au lait", 12, 3) + "\n"
    assert got[2] == expected_sample(tiny, "Caf\u00e9 au lait", 12, 3, 1) + "\n"
    n = len(tiny[0].encode(long_prompt))
    assert f"Prompt too long: {n} tokens and --length 12 need" in too_long
    assert too_long.count("word") == 1000  # echoed once: not by the terminal, then again by readline


class Recorder(io.StringIO):
    """A stdout that remembers what was written before each flush."""
    def __init__(self):
        super().__init__()
        self.flushed = []

    def flush(self):
        self.flushed.append(self.getvalue())


def test_a_lone_sample_is_streamed_token_by_token(tiny, monkeypatch):
    enc, hparams, params = tiny
    sampler = fast.Sampler(params, hparams)
    context = [enc.encode("Streaming \u65e5\u672c\u8a9e")]  # multi-byte characters may span tokens
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    cli.print_samples(enc, sampler, context, 15, first_sample=0, seed=2, temperature=1.0)
    monkeypatch.undo()
    assert len(out.flushed) >= 16  # the header, then once per token
    assert out.getvalue() == cli.header(1) + "\n" + expected_sample(tiny, "Streaming \u65e5\u672c\u8a9e", 15, 2) + "\n"


def stop_across_tokens(enc, tokens):
    """A stop string of the last two characters of one token's text and the first two of the
    next's, for tokens whose text is plain ASCII."""
    texts = [enc.decode([token]) for token in tokens]
    for a, b in zip(texts, texts[1:]):
        if len(a.strip()) >= 2 and len(b.strip()) >= 2 and (a + b).isascii() and (a + b).isprintable():
            return a[-2:] + b[:2]
    raise AssertionError(f"no two ASCII tokens in a row in {texts}")


def test_a_stop_string_across_tokens_is_never_printed(tiny, monkeypatch):
    enc, hparams, params = tiny
    sampler = fast.Sampler(params, hparams)
    context = [enc.encode("Hello")]
    new = sampler.sample(context, 40, seed=2)[0, len(context[0]):]
    text, stop = enc.decode(new), stop_across_tokens(enc, new)
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    cli.print_samples(enc, sampler, context, 40, first_sample=0, seed=2, stop=["never in it", stop])
    monkeypatch.undo()
    # Streamed token by token, and only ever added to: no part of the stop string was printed.
    assert len(out.flushed) >= 3
    assert out.getvalue() == cli.header(1) + "\n" + text[:text.index(stop)] + "\n"


def test_a_batch_ends_each_sample_at_its_first_stop_string_or_end_token(tiny, monkeypatch):
    enc, hparams, params = tiny
    context = [enc.encode("Hello")] * 3
    free = fast.Sampler(params, hparams).sample(context, 30, seed=4)[:, 1:]
    texts = [enc.decode(row) for row in free]
    stop = stop_across_tokens(enc, free[0])
    end = int(free[1, 5])
    sampler = fast.Sampler(params, hparams, end_token=end)
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    cli.print_samples(enc, sampler, context, 30, first_sample=0, seed=4, stop=[stop, "zzzz"])
    monkeypatch.undo()
    want = []
    for row, text in zip(free, texts):
        before_end = enc.decode(stopping.before_end(row, end)[0])
        cut = text.index(stop) if stop in text else len(text)
        want.append(before_end if len(before_end) < cut else text[:cut])
    assert samples(out.getvalue()) == {i + 1: want[i] + "\n" for i in range(3)}
    assert want[0] == texts[0][:texts[0].index(stop)] and want[1] == enc.decode(free[1, :5])


def test_the_scripts_stop_at_stop_strings(models_dir, tiny_model, tiny):
    enc, hparams, params = tiny
    new = fast.Sampler(params, hparams).sample([[50256]], 30, seed=7)[0, 1:]
    text, stop = enc.decode(new), stop_across_tokens(enc, new)
    result = run(UNCONDITIONAL, models_dir, tiny_model, "--nsamples", "1", "--length", "30", "--seed", "7",
                 "--stop", "never in it", "--stop_at_endoftext", "--stop", stop)
    assert result.returncode == 0, result.stderr
    assert samples(result.stdout) == {1: text[:text.index(stop)] + "\n"}
    result = run(UNCONDITIONAL, models_dir, tiny_model, "--nsamples", "1", "--stop", "")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: --stop must be a non-empty string (one for each stop string). Received: ''\n"


@pytest.mark.parametrize("flags, message", [
    (dict(model_name="355M"), "download it with `python3 download_model.py 355M --models_dir"),
    (dict(length=65), "--length and the prompt's 1 token need 65 positions, more than the model's window of 64 (the "
                      "last new token needs none): use at most 64 new tokens"),
    (dict(temperature=0), "--temperature must be greater than 0: at least 1.2e-38, float32's smallest normal number; "
                          "for greedy decoding (the most likely token each time) use --top_k 1. Received: 0"),
    (dict(temperature="inf"), "--temperature must be a number greater than 0, such as 0.7 (1: the model's own "
                              "probabilities; higher: more random). Received: 'inf'"),
    (dict(top_k=-1), "--top_k must be an integer >= 0"),
    (dict(top_p=1.5), "--top_p must be in (0, 1]"),
    (dict(batch_size=0), "--batch_size must be a positive integer. Received: 0"),
    (dict(nsamples=-1), "--nsamples must be an integer >= "),
    (dict(seed=-3), "--seed must be an integer from 0 to 2**63 - 1. Received: -3"),
    (dict(seed=2 ** 63), "--seed must be an integer from 0 to 2**63 - 1. Received: 9223372036854775808"),
    (dict(dtype="float64"), "--dtype must be one of float32, bfloat16, float16. Received: 'float64'"),
    (dict(stop=["\\n", ""]), "--stop must be a non-empty string (one for each stop string). Received: ''"),
])
@pytest.mark.parametrize("script", [generate_unconditional_samples.sample_model, interactive_conditional_samples.interact_model])
def test_bad_flags_are_named(models_dir, tiny_model, script, flags, message):
    with pytest.raises((ValueError, OSError)) as e:
        script(**{"model_name": tiny_model, "models_dir": models_dir, **flags})
    assert message in cli.error_line(e.value) and "\n" not in str(e.value)


class Counted:
    """What cli.Speed reads of a fast.Sampler."""
    def __init__(self, tokens, compiling_tokens, compiling_seconds):
        self.tokens_generated, self.compiling_tokens, self.compiling_seconds = tokens, compiling_tokens, compiling_seconds


@pytest.mark.parametrize("sampler, seconds, line", [
    (Counted(0, 0, 0.0), 1.0, None),
    (Counted(120, 0, 0.0), 2.4, "120 tokens generated in 2.40 s: 50.0 tokens/s"),
    (Counted(1200, 20, 1.6), 11.6, "1,200 tokens generated in 11.60 s: 103.4 tokens/s; 118.0 tokens/s without the "
                                   "first call of each batch size (1.60 s), which compiles"),
    (Counted(20, 20, 2.5), 2.5, "20 tokens generated in 2.50 s: 8.0 tokens/s, compiling included (the first call "
                                "of each batch size compiles)"),
])
def test_the_speed_line_gives_the_rate_without_the_calls_that_compile(sampler, seconds, line):
    speed = cli.Speed(sampler)
    speed.seconds = seconds
    assert speed.line() == line


@pytest.mark.parametrize("script", [generate_unconditional_samples.sample_model, interactive_conditional_samples.interact_model])
@pytest.mark.parametrize("batch_size, nsamples, rows", [(1, 1, 1), (4, 2, 2), (2, 5, 2)])
def test_the_rows_sampled_at_a_time_go_to_the_load(models_dir, tiny_model, monkeypatch, script, batch_size, nsamples,
                                                   rows):
    """The scripts load with the rows they sample at a time and the fast path's choices, which
    set the process's threads before TensorFlow starts (fast.set_threads: one thread an op for up
    to 8 rows on oneDNN's choices)."""
    loads = []

    def load(*args, **kwargs):
        loads.append(kwargs)
        raise SystemExit(0)
    monkeypatch.setattr(cli, "load", load)
    with pytest.raises(SystemExit):
        script(model_name=tiny_model, models_dir=models_dir, batch_size=batch_size, nsamples=nsamples, length=4)
    hparams = cli.load_hparams(tiny_model, models_dir)
    assert loads == [{"sampling": (rows, cli.sampling_choices(hparams, rows, 5, "float32"))}]


@pytest.mark.parametrize("script", [UNCONDITIONAL, INTERACTIVE])
def test_errors_are_one_line_and_exit_nonzero(models_dir, tiny_model, script):
    result = run(script, models_dir, tiny_model, "--top_p", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: --top_p must be in (0, 1] (1: no nucleus filter). Received: 0"
    assert result.stderr.count("\n") == 1  # that line alone: no TensorFlow start-up lines


@pytest.mark.parametrize("value", ["", "yes"])
def test_a_setting_tensorflow_would_abort_on_is_one_line(models_dir, tiny_model, value):
    """TensorFlow aborts the process, core dump and all, at its first oneDNN kernel when
    TF_ONEDNN_ASSUME_FROZEN_WEIGHTS holds what it cannot read as a boolean: said first, in one line."""
    result = subprocess.run(command(UNCONDITIONAL, models_dir, tiny_model, "--nsamples", "1", "--length", "2"),
                            capture_output=True, text=True, timeout=300, env={**ENV, fast.FROZEN_WEIGHTS: value})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"error: TF_ONEDNN_ASSUME_FROZEN_WEIGHTS={value!r} is not a setting TensorFlow can read, "
                             f"and it would abort: set it to 1 or 0, or unset it\n")


@pytest.mark.parametrize("value, frozen", [("1", True), ("TRUE", True), ("true", True), ("0", False),
                                           ("False", False), (None, False)])
def test_frozen_weights_are_read_as_tensorflow_reads_them(monkeypatch, value, frozen):
    if value is None:
        monkeypatch.delenv(fast.FROZEN_WEIGHTS, raising=False)
    else:
        monkeypatch.setenv(fast.FROZEN_WEIGHTS, value)
    cli.check_settings()
    assert fast.weights_frozen() == frozen


# Huge pages: a script starts again with GLIBC_TUNABLES set

HUGE_PAGES_SCRIPT = f"""if True:
    import ctypes, os, sys, types
    sys.path.insert(0, {os.path.join(REPO, "src")!r})
    import cli
    cli.start_tensorflow = lambda: types.SimpleNamespace(errors=types.SimpleNamespace(ResourceExhaustedError=MemoryError))

    def huge_pages_asked(address):
        # Whether the mapping holding address was asked for huge pages (madvise): 'hg' among its
        # VmFlags, what the process asked whatever the kernel then gave.
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                start, _, end = line.split()[0].partition("-")
                if end and all(c in "0123456789abcdef" for c in start + end):
                    inside = int(start, 16) <= address < int(end, 16)
                elif inside and line.startswith("VmFlags:"):
                    return "hg" in line.split()[1:]

    def show():
        malloc = ctypes.CDLL(None).malloc
        malloc.restype = ctypes.c_void_p
        print(os.getpid(), repr(os.environ.get("GLIBC_TUNABLES")), huge_pages_asked(malloc(64 << 20)))

    cli.main(show)
"""


def run_huge_pages_script(tmp_path, env):
    """(the pid the process started with, what it printed): its pid, GLIBC_TUNABLES, and whether
    glibc asked huge pages for a large allocation."""
    script = tmp_path / "show.py"
    script.write_text(HUGE_PAGES_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return process.pid, out.split()


def test_a_script_starts_again_in_its_own_process_with_huge_pages(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "GLIBC_TUNABLES"}
    pid, (shown_pid, tunables, asked) = run_huge_pages_script(tmp_path, env)
    assert shown_pid == str(pid)  # the same process, its command run again
    if cli.huge_pages_possible():
        assert (tunables, asked) == (repr(cli.HUGE_PAGES), "True")
    else:  # glibc before 2.35, or Linux's huge pages for all memory or none: nothing to start again for
        assert (tunables, asked) == ("None", "False")


def test_glibc_settings_of_the_users_own_are_kept(tmp_path):
    for setting in ("", "glibc.malloc.arena_max=2"):
        _, (_, tunables, asked) = run_huge_pages_script(tmp_path, {**ENV, "GLIBC_TUNABLES": setting})
        assert (tunables, asked) == (repr(setting), "False")


@pytest.fixture
def execv(monkeypatch):
    """The command lines os.execv was given, where it fails (as for a missing interpreter); a
    machine where huge pages are possible, the tests' process untraced."""
    started = []

    def execv(path, args):
        started.append((path, args))
        raise OSError("no such interpreter")

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(cli, "huge_pages_possible", lambda: True)
    monkeypatch.setattr(sys, "gettrace", lambda: None)  # under a coverage tool or debugger, the tests' own
    return started


def test_restarting_runs_the_same_command_line_and_takes_back_the_setting_if_it_fails(monkeypatch, execv):
    monkeypatch.setattr(sys, "argv", [UNCONDITIONAL, "--nsamples", "1"])
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "utf8", UNCONDITIONAL, "--nsamples", "1"])
    environ = {}
    cli.restart_with_huge_pages(environ)
    assert execv == [(sys.executable, [sys.executable, "-X", "utf8", UNCONDITIONAL, "--nsamples", "1"])]
    assert environ == {}  # execv failed: the command goes on as it is, without the setting


@pytest.mark.parametrize("orig_argv, argv, traced", [
    (["python3", "-c", "code", "a"], ["-c", "a"], False),  # python -c: the code is not a script to run again
    (["python3", "-", "a"], ["-", "a"], False),  # a program read from stdin, read already
    (["python3", "-m", "pdb", UNCONDITIONAL, "a"], [UNCONDITIONAL, "a"], False),  # pdb runs the script
    (["python3", "-mpdb", UNCONDITIONAL, "a"], [UNCONDITIONAL, "a"], False),
    (["python3", "/usr/bin/ipython"], [UNCONDITIONAL, "a"], False),  # IPython's %run
    (["python3", UNCONDITIONAL, "a"], [UNCONDITIONAL, "a"], True)])  # a debugger or tracer
def test_only_a_script_the_interpreter_runs_itself_starts_again(monkeypatch, execv, orig_argv, argv, traced):
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "gettrace", lambda: print if traced else None)
    environ = {}
    cli.restart_with_huge_pages(environ)
    assert (execv, environ) == ([], {})


def test_a_command_run_in_the_tests_process_does_not_start_again(monkeypatch):
    restarts = []
    monkeypatch.setattr(cli, "restart_with_huge_pages", lambda: restarts.append(sys.argv))
    monkeypatch.setattr(cli, "start_tensorflow", lambda: fast.tf)  # TensorFlow as it is in this process
    monkeypatch.setattr(sys, "argv", [UNCONDITIONAL])
    cli.main(lambda: None, [])
    assert restarts == []
    cli.main(lambda: None)  # its own command line: the script's
    assert restarts == [[UNCONDITIONAL]]


ON_REQUEST = "always [madvise] never\n"  # Linux's transparent huge pages where asked for


@pytest.mark.parametrize("version, setting, possible", [
    ("glibc 2.36", ON_REQUEST, True), ("glibc 2.35", ON_REQUEST, True), ("glibc 2.40.9000", ON_REQUEST, True),
    ("glibc 2.34", ON_REQUEST, False), ("", ON_REQUEST, False), (ValueError, ON_REQUEST, False),
    ("glibc 2.36", "always madvise [never]\n", False), ("glibc 2.36", "[always] madvise never\n", False),
    ("glibc 2.36", None, False)])
def test_huge_pages_are_asked_for_with_glibc_2_35_where_linux_gives_them_on_request(monkeypatch, tmp_path, version,
                                                                                  setting, possible):
    def confstr(name):
        assert name == "CS_GNU_LIBC_VERSION"
        if version is ValueError:
            raise ValueError("unrecognized configuration name")  # macOS, musl
        return version

    monkeypatch.setattr(os, "confstr", confstr)
    path = tmp_path / "enabled"
    if setting is not None:  # None: no such file, a kernel without transparent huge pages
        path.write_text(setting)
    assert cli.huge_pages_possible(str(path)) is possible


# The command line, read before TensorFlow loads

SCORE = os.path.join(REPO, "src", "score.py")
COMMANDS = {UNCONDITIONAL: generate_unconditional_samples.sample_model,
            INTERACTIVE: interactive_conditional_samples.interact_model, SCORE: score.score}


def run_words(script, *words, env=ENV):
    return subprocess.run([sys.executable, script, *words], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("script, words", [(UNCONDITIONAL, ["--nsamples", "0", "--help"]),
                                           (INTERACTIVE, ["--top_k", "40", "-h"]),
                                           (SCORE, ["--json", "--help"])])
def test_help_anywhere_prints_help_before_tensorflow_loads(script, words, no_tensorflow):
    result = run_words(script, *words, env=no_tensorflow)
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    assert "SYNOPSIS" in text and "Traceback" not in text
    for name in inspect.signature(COMMANDS[script]).parameters:
        assert f"--{name}" in text


@pytest.mark.parametrize("script, words, line", [
    (UNCONDITIONAL, ["--lenght", "10", "--nsamples", "0"], "unknown flag --lenght: did you mean --length?"),
    (INTERACTIVE, ["--top-kk=40"], "unknown flag --top-kk: did you mean --top_k or --top_p or --stop?"),
    (SCORE, ["--text", "essay.txt"], "unknown flag --text: did you mean --text_file?"),
    (SCORE, ["--colour"], "unknown flag --colour: the flags are --model_name, --models_dir, --text_file, --json, "
                          "--stride, --dtype"),
    (UNCONDITIONAL, ["-t", "0.7"], "-t is ambiguous: write --temperature or --top_k or --top_p"),
    (INTERACTIVE, ["--length"], "--length needs a value: --length VALUE"),
    (SCORE, ["124M", "models", "essay.txt", "yes", "8", "float32", "extra"],
     "unexpected argument 'extra': every flag has a value already (--help lists them)"),
    (SCORE, ["--text_file", "a.txt", "b.txt"], "unexpected argument 'b.txt' after --text_file a.txt: a flag takes "
     "one value (quote a value with spaces, or a pattern such as 'data/*.txt', for the shell to pass it whole); a "
     "value for --model_name goes with its flag, or before the flags"),
    (SCORE, ["--json=false2"], "--json must be true or false (or yes/no, 1/0; --json alone means true, --nojson "
                               "false). Received: 'false2'"),
    (UNCONDITIONAL, ["--stop_at_endoftext", "maybe"], "--stop_at_endoftext must be true or false"),
])
def test_a_command_line_that_cannot_be_read_is_one_line_before_any_work(script, words, line, no_tensorflow):
    result = run_words(script, *words, env=no_tensorflow)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("error: " + line) and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("command, words, values", [
    (score.score, ["--json=false"], {"json": False}),
    (score.score, ["--json", "no"], {"json": False}),
    (score.score, ["--json=YES", "--stride", "3"], {"json": True, "stride": "3"}),
    (score.score, ["--json", "1"], {"json": True}),
    (score.score, ["--json", "0"], {"json": False}),
    (score.score, ["--json", "--stride=3"], {"json": True, "stride": "3"}),
    (score.score, ["--nojson", "124M"], {"json": False, "model_name": "124M"}),
    (score.score, ["-j", "False"], {"json": False}),
    (generate_unconditional_samples.sample_model, ["--stop_at_endoftext", "no"], {"stop_at_endoftext": False}),
    (generate_unconditional_samples.sample_model, ["--stop-at-endoftext"], {"stop_at_endoftext": True}),
    (generate_unconditional_samples.sample_model, ["--seed", "-1", "-l", "5"], {"seed": "-1", "length": "5"}),
    (generate_unconditional_samples.sample_model, ["--stop", "a"], {"stop": ["a"]}),
    (interactive_conditional_samples.interact_model, ["--stop", "a", "--stop=b", "--stop", ""], {"stop": ["a", "b", ""]}),
])
def test_flags_are_read_as_fire_reads_them_and_booleans_strictly(command, words, values):
    assert cli.read_flags(command, words) == values


def test_main_runs_the_command_with_the_values_fire_parses():
    seen = {}

    def command(model_name="124M", seed=None, json=False, top_p=1, stop=()):
        seen.update(model_name=model_name, seed=seed, json=json, top_p=top_p, stop=stop)

    cli.main(command, ["355M", "--json=no", "--seed", "7", "--top-p=0.9", "--stop", "5", "--stop", "it's \"]"])
    assert seen == {"model_name": "355M", "seed": 7, "json": False, "top_p": 0.9, "stop": ["5", "it's \"]"]}


def test_ctrl_c_while_tensorflow_loads_exits_130_quietly(models_dir, tiny_model):
    process = subprocess.Popen([sys.executable, UNCONDITIONAL, "--model_name", tiny_model, "--models_dir", models_dir,
                                "--nsamples", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        # TensorFlow's library is mapped early in its import, seconds before the import ends.
        while "libtensorflow_framework" not in open(f"/proc/{process.pid}/maps").read():
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert (process.returncode, stdout, stderr) == (130, "", "")


def test_a_batch_too_big_for_memory_says_what_to_lower(models_dir, tiny_model):
    """The cache and logits of 2,000,000 samples need about 1.5 TiB: refused before they are allocated, where
    the kernel would kill the process without a word. Should the check let it through, the
    allocation fails within 8 GiB of address space, without taking the memory, and says less."""
    code = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)); "
            f"sys.path.insert(0, {os.path.dirname(UNCONDITIONAL)!r}); sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, UNCONDITIONAL, "--model_name", tiny_model, "--models_dir",
                             models_dir, "--nsamples", "2000000", "--batch_size", "2000000", "--length", "2"],
                            capture_output=True, text=True, timeout=300, env={**ENV, "MALLOC_ARENA_MAX": "2"})
    assert (result.returncode, result.stdout) == (1, "")
    assert re.fullmatch(r"error: out of memory \(a batch of 2000000 needs about \d+\.\d GiB, [\d.]+ GiB is available\): "
                        r"lower --batch_size or --length, or use a smaller --model_name\n",  # bfloat16 would not fit
                        result.stderr), result.stderr


@pytest.mark.parametrize("bfloat16_instructions", [True, False])
def test_memory_is_checked_against_what_is_available(monkeypatch, bfloat16_instructions):
    monkeypatch.setattr(fast, "has_bfloat16_instructions", lambda: bfloat16_instructions)
    monkeypatch.setattr(fast, "default_device_type", lambda: "CPU")  # wherever the test runs
    hparams = model.HParams(**{**checkpoints.TINY, "n_ctx": 1024})
    chosen = fast.choices_for("float32", rows=64)
    needed, lean = (cli.sampling_memory(hparams, 64, 100, "float32", choices) for choices in (chosen, fast.LEAN))
    assert cli.sampling_choices(hparams, 64, 100, "float32", available=needed) == chosen
    # Where the chosen path's copies of the weights do not fit, XLA's one copy, if it fits.
    assert cli.sampling_choices(hparams, 64, 100, "float32", available=lean) == fast.LEAN
    assert (lean < needed) == bfloat16_instructions
    with pytest.raises(MemoryError, match=r"a batch of 64 needs about 0\.\d GiB, 0\.\d GiB is available"):
        cli.sampling_choices(hparams, 64, 100, "float32", available=lean - 1)
    # The cache grows with the batch and the positions (rounded up to 128), in the dtype's bytes.
    cache = (cli.sampling_memory(hparams, 2, 129, "float32", fast.LEAN)
             - cli.sampling_memory(hparams, 1, 129, "float32", fast.LEAN))
    assert cache == 2 * hparams.n_layer * 256 * hparams.n_embd * 4 + 4 * hparams.n_vocab * 4
    # The weights, and where oneDNN's choices are taken a copy and a half more (their halves and
    # stacks, made as they are read, then oneDNN's converted copy of frozen weights, and what the
    # allocator holds beyond them).
    weights = sum(math.prod(shape) for shape in model.checkpoint_shapes(hparams).values())
    wte = hparams.n_vocab * hparams.n_embd  # transposed, beside wte itself
    cache = 2 * hparams.n_layer * 128 * hparams.n_embd
    logits = 4 * hparams.n_vocab * 4
    full, half = (cli.sampling_memory(hparams, 1, 100, dtype) for dtype in ("float32", "bfloat16"))
    assert full == (weights + wte) * 4 + cache * 4 + logits  # float32 keeps XLA at one row
    full_four = cli.sampling_memory(hparams, 4, 100, "float32")
    if bfloat16_instructions:  # copied once for writing in place; in float32 at batch 1 (float32_attention)
        assert half == weights * 5 + wte * 2 + cache * 4 * 2 + logits
        assert full_four == weights * 10 + wte * 4 + 4 * cache * 4 * 2 + 4 * logits
    else:
        assert half == (weights + wte) * 2 + cache * 2 + logits
        assert full_four == (weights + wte) * 4 + 4 * cache * 4 + 4 * logits


@pytest.mark.parametrize("bfloat16_instructions", [True, False])
def test_bfloat16_is_advised_only_where_it_fits(monkeypatch, bfloat16_instructions):
    monkeypatch.setattr(fast, "has_bfloat16_instructions", lambda: bfloat16_instructions)
    monkeypatch.setattr(fast, "default_device_type", lambda: "CPU")  # wherever the test runs
    hparams = model.HParams(**{**checkpoints.TINY, "n_ctx": 1024})

    def line(dtype, available):  # the line for a batch of 8 of 100 positions
        with pytest.raises(MemoryError) as error:
            cli.sampling_choices(hparams, 8, 100, dtype, available=available)
        return cli.out_of_memory_line(interactive_conditional_samples.interact_model, error.value)
    # What each dtype needs at least: XLA's one copy of the weights.
    full, half = (cli.sampling_memory(hparams, 8, 100, dtype, fast.LEAN) for dtype in ("float32", "bfloat16"))
    assert half < full
    assert line("float32", full - 1).endswith(", or use a smaller --model_name or --dtype bfloat16")
    assert line("float32", half - 1).endswith(", or use a smaller --model_name")
    assert line("bfloat16", half - 1).endswith(", or use a smaller --model_name")  # already bfloat16


def test_out_of_memory_names_the_flags_each_script_has():
    assert cli.out_of_memory_line(score.score) == "error: out of memory: use a smaller --model_name or --dtype bfloat16"
    assert cli.out_of_memory_line(interactive_conditional_samples.interact_model) == (
        "error: out of memory: lower --batch_size or --length, or use a smaller --model_name or --dtype bfloat16")
    assert cli.out_of_memory_line(convert_checkpoint.convert_checkpoint) == "error: out of memory: free some memory"


def test_unsupported_pythons_are_named_in_one_line(no_tensorflow):
    assert cli.python_problem((3, 10)) is None and cli.python_problem((3, 13, 0)) is None
    assert cli.python_problem(sys.version_info) is None
    for version in [(3, 9), (3, 14), (4, 0)]:
        assert cli.python_problem(version) == (
            f"error: this is Python {version[0]}.{version[1]}; the scripts run on Python 3.10 to 3.13, for which "
            "TensorFlow 2.20 is built: make the virtual environment with one of those (README.md, Set up)")
    # A script run by Python 3.14 (as far as it can tell) says so, and nothing else.
    code = ("import runpy, sys; sys.version_info = (3, 14, 0, 'final', 0); "
            f"sys.path.insert(0, {os.path.dirname(SCORE)!r}); sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, SCORE, "--text_file", "x.txt"], capture_output=True,
                            text=True, timeout=60, env=no_tensorflow)
    assert (result.returncode, result.stderr) == (1, cli.python_problem((3, 14)) + "\n")


def test_a_python_without_the_requirements_says_how_to_install_them():
    result = subprocess.run([sys.executable, "-S", SCORE, "--text_file", "x.txt"], capture_output=True, text=True,
                            timeout=60, env=ENV)  # -S: no site-packages
    assert result.returncode == 1
    assert result.stderr == (f"error: No module named 'fire' in {sys.executable}: install the requirements "
                             "(pip install -r requirements.txt)\n")


def test_tensorflows_start_up_lines_are_held_back():
    # absl writes TensorFlow's lines whatever TF_CPP_MIN_LOG_LEVEL says: a TF1 session's inside
    # the block, XLA's first compilation's after it, to show that they are there to hold back.
    code = f"""if True:
        import sys
        sys.path.insert(0, {os.path.dirname(SCORE)!r})
        import cli, logs  # cli sets the scripts' default TF_CPP_MIN_LOG_LEVEL
        with logs.held_back():
            import tensorflow as tf
            with tf.Graph().as_default(), tf.compat.v1.Session() as session:
                session.run(tf.constant(1.0) + 1)
            print("kept", file=sys.stderr)
        print("held back", file=sys.stderr, flush=True)
        tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(0))
        """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("kept\nheld back\n"), result.stderr
    after = result.stderr.splitlines()[2:]
    assert after and all(logs.below_level(line, 3) for line in after), after
