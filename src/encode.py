#!/usr/bin/env python3
"""Encodes a dataset to GPT-2's token ids once, into a .npz that fine-tuning loads at once:

    python src/encode.py data/ data.npz
    python src/encode.py 'data/**/*.txt' data.npz --model_name 355M

The .npz holds int32 arrays: the text files' ids (their documents, each followed by
<|endoftext|>, id 50256), consecutive files joined into arrays of --combine tokens or more, and
each array of each .npz in the dataset, as it was. nshepperd/gpt-2's train.py reads it too: it
takes its windows within one array, and refuses arrays shorter on average than a window (an
array for each of many short files). OUT_NPZ must end in .npz (numpy adds .npz to any other
name, so a file of another name would not be the one written); it is written whole or not at
all. TensorFlow is not loaded.
"""
import os

import numpy as np

import cli
import dataset
import encoder
import paths
from checks import is_integer


def encode(in_text=None, out_npz=None, model_name="124M", models_dir="models", combine=50000):
    """Encodes a dataset with GPT-2's tokenizer into a .npz of token ids

    :in_text=None : String, the dataset: a UTF-8 text file, a folder (every file under it but
     hidden ones), a glob pattern (quoted: 'data/*.txt') or a .npz; `<|endoftext|>` written in
     a text separates documents
    :out_npz=None : String, the .npz file to write (its name must end in .npz)
    :model_name=124M : String, the model whose vocabulary encodes the text
    :models_dir=models : String, the folder holding the model folders
    :combine=50000 : Integer, join consecutive text files into arrays of at least this many
     tokens, as nshepperd/gpt-2's encode.py --combine (which counts characters) does, so that its
     train.py reads the .npz; 0 writes an array for each file
    """
    in_text, out_npz = required("in_text", "DATASET", in_text), required("out_npz", "OUT.npz", out_npz)
    check_out(out_npz)
    if not is_integer(combine) or combine < 0:
        raise ValueError(f"--combine must be an integer >= 0 (0: an array for each text file). Received: {combine!r}")
    enc = encoder.get_encoder(str(model_name), cli.expand_dir(models_dir))
    chunks = dataset.load_chunks(enc, in_text, n_vocab=len(enc.encoder), combine=combine, exclude=out_npz)
    write_npz(out_npz, chunks)
    tokens = sum(map(len, chunks))
    documents = sum(int(np.sum(chunk == enc.encoder[dataset.END_OF_TEXT])) for chunk in chunks)
    plural = lambda n: "s" if n != 1 else ""  # noqa: E731
    print(f"wrote {documents} document{plural(documents)}, {tokens} tokens ({len(chunks)} array{plural(len(chunks))}) "
          f"to {out_npz}")


def required(name, metavar, value):
    """The value of a flag that has no default, as a string."""
    if value is None:
        raise cli.UsageError(f"{metavar} is missing: encode.py DATASET OUT.npz (or --{name} {metavar})")
    return str(value)


def check_out(path):
    """ValueError or OSError unless `path` is a .npz name in a folder this user can write."""
    if not path.endswith(".npz"):
        raise ValueError(f"{path} does not end in .npz: name the output file NAME.npz (numpy adds .npz to any "
                         f"other name)")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder: name the .npz file to write, e.g. {path}/data.npz")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder: make it (mkdir -p {folder}) or write the .npz elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder} is not writable by this user: write the .npz elsewhere")


def write_npz(path, arrays):
    """np.savez_compressed(path, *arrays), whole or not at all: written to a hidden temporary
    file beside `path` and renamed, so that a failure or Ctrl-C leaves no part of a file."""
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    full = paths.disk_full_said(os.path.dirname(path) or ".", f"{path} is not written; free space there, or "
                                "write it elsewhere")
    with full, paths.removed_if_failed(temporary):
        with open(temporary, "wb") as f:
            np.savez_compressed(f, *arrays)
            f.flush()
            os.fsync(f.fileno())  # the data on disk before the name: a crash leaves the old file or the new
        os.replace(temporary, path)


if __name__ == "__main__":
    cli.main(encode, tensorflow=False)
