"""What the command-line scripts share: loading a model by name, and one-line errors."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

import fire
import tensorflow as tf

import encoder
import model

DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}


def parse_dtype(dtype):
    """'float32', 'bfloat16' or 'float16' -> the tf.DType."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}. Received: {dtype!r}")
    return DTYPES[dtype]


def load(model_name, models_dir, dtype="float32"):
    """(encoder, hparams, params) of a downloaded model, weights in `dtype`."""
    dtype = parse_dtype(dtype)
    path = model.model_dir(str(model_name), str(models_dir))
    enc = encoder.get_encoder(str(model_name), str(models_dir))
    hparams = model.load_hparams(path)
    return enc, hparams, model.load_params(model.find_checkpoint(path), hparams, dtype)


def main(command):
    """Runs `command` with fire; expected failures end in one line on stderr, not a traceback."""
    try:
        fire.Fire(command)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
