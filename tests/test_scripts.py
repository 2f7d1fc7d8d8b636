"""The two sampling scripts end to end on a tiny checkpoint: output format, numbering, seeds,
streaming, Ctrl-C / Ctrl-D, and one-line errors."""
import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cli
import encoder
import fast
import generate_unconditional_samples
import interactive_conditional_samples
import model

from helpers import REPO
UNCONDITIONAL = os.path.join(REPO, "src", "generate_unconditional_samples.py")
INTERACTIVE = os.path.join(REPO, "src", "interactive_conditional_samples.py")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "UTF-8"}


def run(script, models_dir, model_name, *flags, stdin=""):
    return subprocess.run([sys.executable, script, "--model_name", model_name, "--models_dir", models_dir, *flags],
                          input=stdin, capture_output=True, text=True, timeout=300, env=ENV)


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
    outputs = [run(UNCONDITIONAL, models_dir, tiny_model, *flags, "--batch_size", b) for b in ("1", "2", "4")]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert re.findall(r"SAMPLE (\d+)", result.stdout) == ["1", "2", "3"]
    assert samples(outputs[0].stdout) == samples(outputs[1].stdout) == samples(outputs[2].stdout)
    assert len(set(samples(outputs[0].stdout).values())) == 3


def test_unconditional_greedy_output_is_the_models_argmax(models_dir, tiny_model, tiny):
    enc, hparams, params = tiny
    result = run(UNCONDITIONAL, models_dir, tiny_model, "--nsamples", "1", "--length", "10", "--top_k", "1")
    assert result.returncode == 0, result.stderr
    tokens = np.array([[50256]], np.int32)
    for _ in range(10):
        logits = model.model(params, hparams, tokens)["logits"][:, -1]
        tokens = np.concatenate([tokens, np.argmax(logits, -1)[:, None].astype(np.int32)], 1)
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
    result = run(INTERACTIVE, models_dir, tiny_model, "--length", "20", "--seed", "5", "--nsamples", "2",
                 "--batch_size", "2", stdin=f"\n{long_prompt}\nHello world\n")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    out = result.stdout
    assert out.count("Model prompt >>> ") == 4
    assert "Prompt should not be empty!" in out
    assert f"Prompt too long: {n} tokens plus --length 20 exceed the window of 64 tokens; use at most 45" in out
    assert out.index("Prompt too long") < out.index("SAMPLE 1")
    assert "=" * 80 in out
    got = samples(out.split("=" * 80)[0])
    assert got == {i + 1: expected_sample(tiny, "Hello world", 20, 5, i) + "\n" for i in range(2)}


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
    assert f"Prompt too long: {n} tokens plus --length 12" in too_long


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


def test_until_end_cuts_at_the_first_end_token():
    assert cli.until_end([5, 6, 50256, 7, 50256], 50256) == [5, 6]
    assert cli.until_end([5, 6], 50256) == [5, 6]
    assert cli.until_end([5, 6], None) == [5, 6]


@pytest.mark.parametrize("flags, message", [
    (dict(model_name="355M"), "download it with `python3 download_model.py 355M --models_dir"),
    (dict(length=65), "--length plus the prompt's 1 token exceeds the model's window of 64 tokens: use at most 64"),
    (dict(temperature=0), "--temperature must be greater than 0"),
    (dict(top_k=-1), "--top_k must be an integer >= 0"),
    (dict(top_p=1.5), "--top_p must be in (0, 1]"),
    (dict(batch_size=0), "--batch_size must be a positive integer. Received: 0"),
    (dict(nsamples=-1), "--nsamples must be an integer >= "),
    (dict(seed=-3), "--seed must be an integer from 0 to 2**63 - 1. Received: -3"),
    (dict(seed=2 ** 63), "--seed must be an integer from 0 to 2**63 - 1. Received: 9223372036854775808"),
    (dict(dtype="float64"), "--dtype must be one of float32, bfloat16, float16. Received: 'float64'"),
])
@pytest.mark.parametrize("script", [generate_unconditional_samples.sample_model, interactive_conditional_samples.interact_model])
def test_bad_flags_are_named(models_dir, tiny_model, script, flags, message):
    with pytest.raises((ValueError, OSError)) as e:
        script(**{"model_name": tiny_model, "models_dir": models_dir, **flags})
    assert message in cli.error_line(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("script", [UNCONDITIONAL, INTERACTIVE])
def test_errors_are_one_line_and_exit_nonzero(models_dir, tiny_model, script):
    result = run(script, models_dir, tiny_model, "--top_p", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: --top_p must be in (0, 1] (1: no nucleus filter). Received: 0"
