#!/usr/bin/env python3
"""Continues prompts typed at `Model prompt >>> ` with GPT-2 samples.

A line that ends in a backslash goes on at the next line, `             ... `: the prompt is the
lines with those backslashes taken out and the line breaks kept. Or `--prompt_file FILE` gives
the prompt, a whole file, without asking. At the end, how fast it sampled goes to stderr.
"""
import codecs
import contextlib
import os
import signal
import sys

import cli


class BadPrompt(ValueError):
    """A prompt the session refuses, saying why; the next one is read."""


def ask(prompt):
    """The line typed after `prompt`, without its newline; EOFError at the end of input.

    At a terminal, input() with readline: line editing, and no limit on the line's length
    (the terminal's own line editing stops at 4,095 bytes). Elsewhere, the bytes of a line of
    standard input. Ctrl-C raises KeyboardInterrupt (see `reads_woken`).
    """
    if sys.stdin.isatty() and sys.stdout.isatty():
        with contextlib.suppress(ImportError):  # Windows has no readline
            import readline
            readline.parse_and_bind("tab: tab-insert")  # a prompt's tabs are text, not completion
        try:
            with reads_woken():
                return utf8(input(prompt))
        except UnicodeDecodeError as e:
            raise BadPrompt(not_utf8(e.object[e.start])) from None
    print(prompt, end="", flush=True)
    with reads_woken():
        line = sys.stdin.buffer.readline()
    if not line:
        raise EOFError
    return utf8(line.rstrip(b"\n").rstrip(b"\r").decode(sys.stdin.encoding or "utf-8", "surrogateescape"))


@contextlib.contextmanager
def reads_woken(interval=0.1):
    """A `with` block whose blocking reads are interrupted every `interval` seconds (SIGALRM).

    Python's line reading, readline's too, acts on a Ctrl-C only when it interrupts the read:
    one that lands just before the read begins (as the prompt appears) would otherwise wait for
    the next key. (Where it lands is no worry: Linux gives a process's SIGINT to its main thread,
    which does not block it, rather than to one of TensorFlow's threads.)
    """
    if not hasattr(signal, "setitimer"):  # Windows
        yield
        return
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def utf8(text):
    """text, unless it holds bytes that were not valid in the terminal's encoding (which
    Python's surrogateescape keeps as lone surrogates): then BadPrompt."""
    for char in text:
        if "\udc80" <= char <= "\udcff":
            raise BadPrompt(not_utf8(ord(char) - 0xDC00))
    return text


def not_utf8(byte):
    """What to say about a prompt holding `byte`, not valid in the terminal's encoding."""
    encoding = codecs.lookup(sys.stdin.encoding or "utf-8").name.upper()
    return (f"Prompt is not {encoding} text (byte 0x{byte:02x}): type or paste it as {encoding}, or set "
            "PYTHONIOENCODING to your terminal's encoding.")


PROMPT, MORE = "Model prompt >>> ", "             ... "  # the first line's, the next lines'


def ask_lines():
    """The lines typed, the first after PROMPT and the next after MORE while a line ends in a
    backslash, joined by line breaks, without those backslashes."""
    lines = [ask(PROMPT)]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(ask(MORE))
    return "\n".join(lines)


def read_prompt():
    """The next prompt that is not empty and is text; EOFError at the end of input."""
    while True:
        try:
            raw_text = ask_lines()
        except BadPrompt as e:
            print(e)
            continue
        if raw_text:
            return raw_text
        print("Prompt should not be empty!")


def read_prompt_file(prompt_file):
    """The text of the UTF-8 file `prompt_file`, which must not be empty; ValueError or OSError
    naming --prompt_file."""
    try:
        with open(os.path.expanduser(str(prompt_file)), encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"--prompt_file {prompt_file} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                         f"{e.start}): save it as UTF-8") from None
    except OSError as e:
        raise type(e)(f"--prompt_file {prompt_file} cannot be read ({e.strerror})") from None
    if not text:
        raise ValueError(f"--prompt_file {prompt_file} is empty: give a file that holds the prompt")
    return text


def interact_model(model_name="124M", seed=None, nsamples=1, batch_size=1, length=None, temperature=1,
                   top_k=0, top_p=1, models_dir="models", dtype="float32", stop_at_endoftext=False, stop=(),
                   prompt_file=None):
    """Interactively run the model. A line ending in a backslash continues the prompt on the next
    line (the backslash taken out, the line break kept). Prints how fast it sampled on stderr at the end.

    :model_name=124M : String, which model to use
    :seed=None : Integer seed for the random numbers; the same seed gives the same samples,
     whatever the batch_size (None: a new seed every run)
    :nsamples=1 : Number of samples to return for each prompt
    :batch_size=1 : Number of samples made at once (only affects speed/memory); a lone sample
     is streamed token by token. nsamples need not be a multiple of it.
    :length=None : Number of tokens in generated text; None (default) means half the model's
     window (512 for the released models)
    :temperature=1 : Float value controlling randomness in boltzmann distribution. Lower
     temperature results in less random completions. As the temperature approaches zero, the
     model will become deterministic and repetitive. Higher temperature results in more random
     completions. Its limit at zero, greedy decoding, is --top_k 1; 0 itself is refused.
    :top_k=0 : Integer value controlling diversity. 1 means only 1 word is considered for each
     step (token), resulting in deterministic completions, while 40 means 40 words are considered
     at each step. 0 (default) is a special setting meaning no restrictions. 40 generally is a
     good value.
    :top_p=1 : Float in (0, 1], nucleus sampling: keep the most likely tokens whose probabilities
     add up to at most top_p (at least one). 1 (default) keeps all.
    :models_dir=models : path to parent folder containing model subfolders (i.e. contains the
     <model_name> folder)
    :dtype=float32 : String, weights and matmuls in float32, bfloat16 or float16
    :stop_at_endoftext=False : Boolean, end each sample at its first <|endoftext|>
    :stop=() : String: end each sample where its text first contains it, however it falls
     across tokens; it is not printed. Repeat the flag for several: --stop END --stop "###"
    :prompt_file=None : String, a UTF-8 text file whose whole text, line breaks and all, is the
     prompt: its samples are printed and the script ends, asking nothing
    """
    import fast  # here, not above: cli.main answers --help and bad flags before TensorFlow loads
    import sample
    import stopping
    stopping.check_stops(stop)
    cli.check_counts(nsamples, batch_size)
    prompt = None if prompt_file is None else read_prompt_file(prompt_file)
    seed = cli.make_seed(seed)
    hparams = cli.load_hparams(model_name, models_dir)
    length = hparams.n_ctx // 2 if length is None else length
    tokens = prompt_tokens(model_name, models_dir, prompt)
    shortest = 1 if tokens is None else len(tokens)  # 1: the shortest prompt one can type
    if shortest > hparams.n_ctx:  # no room for one new token, whatever --length
        raise ValueError(f"--prompt_file {prompt_file} has {shortest} tokens, more than the model's window of "
                         f"{hparams.n_ctx}: shorten it")
    sample.check_sampling(hparams, shortest, length, temperature, top_k, top_p)
    rows = batch_size if nsamples == 0 else min(batch_size, nsamples)  # sampled at a time
    choices = cli.sampling_choices(hparams, rows, shortest + length, dtype)
    enc, hparams, params = cli.load(model_name, models_dir, dtype, sampling=(rows, choices))
    sampler = fast.Sampler(params, hparams, top_k=top_k, top_p=top_p, choices=choices,
                             end_token=enc.encoder["<|endoftext|>"] if stop_at_endoftext else None)
    del params  # the Sampler holds what it reads, laid out for it as it was read (cli.load)
    speed = cli.Speed(sampler)
    for context_tokens in prompts(enc, tokens, length, hparams.n_ctx):
        with speed.timed():
            sample_prompt(enc, sampler, context_tokens, nsamples, batch_size, length, temperature, seed, stop)
    speed.report()


def prompt_tokens(model_name, models_dir, prompt):
    """--prompt_file's text as tokens, None without one: its encoder read before the weights,
    so that a --length too long for it is refused first."""
    if prompt is None:
        return None
    import encoder
    return encoder.get_encoder(str(model_name), cli.expand_dir(models_dir)).encode(prompt)


def prompts(enc, tokens, length, n_ctx):
    """The prompts' tokens: --prompt_file's `tokens` once (checked by `interact_model`), or each
    prompt typed until Ctrl-D or Ctrl-C at the prompt (too long: said, and asked again)."""
    if tokens is not None:
        yield tokens
        return
    while True:
        try:
            tokens = enc.encode(read_prompt())
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt ends the session
            print()
            return
        if len(tokens) + length - 1 > n_ctx:
            print(f"Prompt too long: {too_long(len(tokens), length, n_ctx)}.")
            continue
        yield tokens


def too_long(n, length, n_ctx):
    """Why a prompt of n tokens does not fit with --length new ones, and what fits."""
    return (f"{n} tokens and --length {length} need {n + length - 1} positions, more than the window of {n_ctx} (the "
            f"last new token needs none); use at most {n_ctx + 1 - length} prompt tokens")


def sample_prompt(enc, sampler, context_tokens, nsamples, batch_size, length, temperature, seed, stop):
    """Prints the nsamples samples of one prompt, batch_size at a time, then a line of `=`.
    Ctrl-C stops the sample and comes back (see cli.CtrlC)."""
    with cli.CtrlC() as ctrl_c:
        for first in range(0, nsamples, batch_size):
            batch = min(batch_size, nsamples - first)
            cli.print_samples(enc, sampler, [context_tokens] * batch, length, first_sample=first,
                              temperature=temperature, seed=seed, stop=stop, ctrl_c=ctrl_c)
            if ctrl_c.pressed:
                break
    print("=" * 80)


if __name__ == "__main__":
    cli.main(interact_model)
