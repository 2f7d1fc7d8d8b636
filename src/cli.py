"""What the command-line scripts share: loading a model by name, and one-line errors."""
import codecs
import os
import random
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter

import fire
import numpy as np
import tensorflow as tf

import encoder
import fast
import model
import sample
from checks import is_integer

DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}


def parse_dtype(dtype):
    """'float32', 'bfloat16' or 'float16' -> the tf.DType."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}. Received: {dtype!r}")
    return DTYPES[dtype]


def freeze_weights(dtype):
    """In half precision, lets oneDNN convert each weight matrix to its own layout once rather
    than at every call (bench_generate.py --dtype bfloat16 --no_frozen_weights). Safe in
    the scripts: they load their weights once, as tensors (see fast.check_weights_can_change)."""
    if dtype != tf.float32:
        os.environ.setdefault(fast.FROZEN_WEIGHTS, "1")


def expand_dir(models_dir):
    """--models_dir with `~` and environment variables expanded, as the original's scripts did."""
    return os.path.expanduser(os.path.expandvars(str(models_dir)))


def load_hparams(model_name, models_dir):
    """The hparams of a downloaded model."""
    return model.load_hparams(model.model_dir(str(model_name), expand_dir(models_dir)))


def report_device():
    """With GPT2_REPORT_DEVICE=1 (the GPU image sets it), says on stderr which device runs the
    model, so that a CUDA set-up TensorFlow cannot use does not fall back to the CPU unseen."""
    if os.environ.get("GPT2_REPORT_DEVICE") != "1":
        return
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "unnamed")
        print(f"running on GPU:0 ({name})", file=sys.stderr)
    elif not tf.test.is_built_with_cuda():
        print("running on the CPU: this TensorFlow is built without CUDA", file=sys.stderr)
    else:
        print("running on the CPU: no GPU visible to TensorFlow; check `docker run --gpus all` "
              "and the NVIDIA driver", file=sys.stderr)


def load(model_name, models_dir, dtype="float32"):
    """(encoder, hparams, params) of a downloaded model, weights in `dtype`."""
    report_device()
    dtype = parse_dtype(dtype)
    freeze_weights(dtype)
    model_name, models_dir = str(model_name), expand_dir(models_dir)
    path = model.model_dir(model_name, models_dir)
    enc = encoder.get_encoder(model_name, models_dir)
    hparams = model.load_hparams(path)
    return enc, hparams, fast.load_params(model.find_checkpoint(path), hparams, dtype)


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
    if not is_integer(seed) or not 0 <= seed <= sample.MAX_SEED:
        raise ValueError(f"--seed must be an integer from 0 to 2**63 - 1. Received: {seed!r}")
    return seed


def header(number):
    """The original's line above each sample."""
    return "=" * 40 + " SAMPLE " + str(number) + " " + "=" * 40


def until_end(tokens, end_token):
    """The tokens before the first end_token (all of them without one)."""
    tokens = list(tokens)
    return tokens[:tokens.index(end_token)] if end_token in tokens else tokens


def print_samples(enc, sampler, context, length, *, first_sample, **kwargs):
    """Prints samples first_sample + 1 .. with the original's headers. A lone sample is
    streamed token by token; a batch is printed when it is done."""
    context = np.asarray(context, np.int32)  # [batch, n]
    if len(context) > 1:
        out = sampler.sample(context, length, first_sample=first_sample, **kwargs)[:, context.shape[1]:]
        for i, tokens in enumerate(out):
            print(header(first_sample + i + 1))
            print(enc.decode(until_end(tokens, sampler.end_token)))
        return
    print(header(first_sample + 1), flush=True)
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    for tokens in sampler.generate(context, length, first_sample=first_sample, chunk=1, **kwargs):
        print(text.decode(enc.decode_bytes(until_end(tokens[0], sampler.end_token))), end="", flush=True)
    print(text.decode(b"", final=True))


def silence_xla_banner():
    """XLA announces its first compilation on stderr whatever TF_CPP_MIN_LOG_LEVEL says, which
    would land in the middle of a sample: make that first compilation a trivial one, unheard."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(0))
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def error_line(error):
    """The one line that reports an expected error; an argument's name becomes its flag."""
    return f"error: {'--' if getattr(error, 'argument', None) else ''}{error}"


def main(command):
    """Runs `command` with fire; expected failures end in one line on stderr, not a traceback."""
    silence_xla_banner()
    try:
        fire.Fire(command)
    except (ValueError, OSError) as e:
        sys.exit(error_line(e))
    except KeyboardInterrupt:
        sys.exit(130)
