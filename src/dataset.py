"""Training data as tokens: a dataset's text (or .npz of token ids) as one stream of token ids,
and fixed-length windows of that stream in a seeded order.

    >>> tokens = load_dataset(enc, "data/", n_vocab=50257)   # every file under data/
    >>> windows = Windows(tokens, 1024, seed=0)
    >>> windows.batch(0, 8).shape                             # the first 8 windows of epoch 0
    (8, 1024)

A text file holds one or more documents, separated by `<|endoftext|>` written in the text; each
document becomes `enc.encode(document)` followed by the end-of-text id, 50256: the literal
`<|endoftext|>` becomes that one id, never the 7 tokens BPE makes of it. A text's lines end in
"\\n", as when Python reads a file in text mode (nshepperd/gpt-2's load_dataset does).

Text is encoded in a pool of processes, one per core. A long document is cut into pieces just
before a "\\n" that comes before a character other than whitespace: no piece of GPT-2's pattern
(encoder.PATTERN) spans that place, and the text on either side cuts into the same pieces alone
as in the whole, so the pieces' ids joined are the document's ids. (Cutting just after the
"\\n" would not do: "a\\n\\nb" is 64 198 198 65, but "a\\n\\n" alone ends in 628, "\\n\\n".)
"""
import contextlib
import copy
import glob
import multiprocessing
import os
import signal
import threading
import zipfile
import zlib

import numpy as np
import regex
from tqdm import tqdm

from checks import bad_argument, is_integer

END_OF_TEXT = "<|endoftext|>"
CUT = regex.compile(r"\n(?=\S)")  # `regex`, as encoder.PATTERN, so that \S means the same there
PIECE_CHARS = 1 << 18  # characters a process encodes at a time; a smaller dataset is encoded without a pool
# An .npz's arrays may declare at most MAX_COMPRESSION times the file's size (deflate gives token
# ids of text about 3, a text repeated over and over up to its limit, 1032; bzip2 and lzma, which
# zip allows too, far more), or UNCHECKED_BYTES (64M ids) whatever the file's size.
MAX_COMPRESSION = 100
UNCHECKED_BYTES = 1 << 28


# --- Which files -------------------------------------------------------------------------------

def dataset_files(path):
    """The files of the dataset at `path`, in order: the file itself; every file under a folder,
    sorted, hidden ones (a name starting with ".") skipped; or a glob pattern's sorted matches,
    a folder among them standing for its files."""
    path = str(path)
    if os.path.isdir(path):
        files = folder_files(path)
        if not files:
            raise ValueError(f"{path} is a folder with no files: put the dataset's text files (or .npz) in it")
        return regular_files(files)
    if os.path.exists(path):
        return [path]  # a named pipe too (`<(zcat data.gz)`): given by name, it is meant
    if not glob.has_magic(path):
        raise FileNotFoundError(f"{path} not found: give a text file, a folder, a .npz, or a glob pattern such as "
                                f"'data/*.txt'")
    # `**` follows symbolic links to folders, round a loop too: each real file is read once
    files = once([file for match in sorted(glob.glob(path, recursive=True))
                  for file in (folder_files(match) if os.path.isdir(os.path.realpath(match)) else [match])])
    if not files:
        raise FileNotFoundError(f"{path} matches no files: check the pattern (quoted, so that the shell leaves it "
                                f"to this script)")
    return regular_files(files)


def once(files):
    """`files` without those that are another's file again (through a symbolic link), and
    without folders among them: `**` going round a link to a folder above reaches a depth the
    system cannot open (ELOOP), where os.walk takes the link for a file. In order."""
    seen, kept = set(), []
    for file in files:
        real = os.path.realpath(file)
        if real not in seen and not os.path.isdir(real):
            seen.add(real)
            kept.append(file)
    return kept


def regular_files(files):
    """`files`, or a ValueError naming the first that is no file to read: a broken or looping
    symbolic link, or a pipe, socket or device, whose reading would wait forever."""
    for file in files:
        if not os.path.isfile(file):
            what = ("a broken or looping symbolic link" if os.path.islink(file) and not os.path.exists(file)
                    else "not a regular file (a pipe, socket or device)")
            raise ValueError(f"{file} is {what}: remove it from the dataset, or name the dataset's files with a "
                             f"glob pattern")
    return files


def folder_files(folder):
    """The files under `folder`, at any depth, sorted; hidden files and folders skipped."""
    files = []
    for parent, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]  # os.walk then skips them
        files += [os.path.join(parent, name) for name in names if not name.startswith(".")]
    return sorted(files)


def is_npz(path):
    """Whether the dataset's file at `path` holds token ids rather than text."""
    return path.lower().endswith(".npz")


# --- Reading -----------------------------------------------------------------------------------

def read_text(path):
    """The UTF-8 text of the file at `path`, its line endings made "\\n" as in Python's text mode."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): convert it to UTF-8 (e.g. "
                         f"`iconv -f latin1 -t utf-8`) or move it out of the dataset") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


class CompressedTooMuch(ValueError):
    """An .npz whose arrays declare more bytes than token ids could be compressed into it."""


def check_compression(path):
    """CompressedTooMuch when the arrays of the .npz at `path` declare more than MAX_COMPRESSION
    times its size, and more than UNCHECKED_BYTES: a damaged or crafted file (a zip bomb: 7.8 MB
    that inflate to 2e9 ids, 8 GB), refused before a byte of it is inflated. The file's size is
    what counts, not the compressed sizes its members declare, which can lie as well."""
    with zipfile.ZipFile(path) as archive:
        declared = sum(info.file_size for info in archive.infolist())
    size = os.path.getsize(path)
    if declared > max(UNCHECKED_BYTES, MAX_COMPRESSION * size):
        raise CompressedTooMuch(
            f"{path} declares arrays of {declared:,} bytes in a file of {size:,} bytes, {declared / size:,.0f} times "
            f"as many: more than token ids compress (text's, about 3 times; at most {MAX_COMPRESSION} is read), so "
            f"a damaged or crafted file. A text repeated over and over compresses so: train on the text itself, or "
            f"save its ids uncompressed (np.savez)")


def read_npz(path, n_vocab):
    """The token arrays of the .npz at `path`, as np.savez wrote them (in `files` order), int32
    (the arrays read, not copies, when they are int32 already)."""
    if not zipfile.is_zipfile(path):  # np.load would read it as a .npy or a pickle, and say so
        raise ValueError(f"{path} is not a .npz (a zip archive of arrays): write it with encode.py, or name a "
                         f"text file otherwise")
    try:
        check_compression(path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = [(name, npz[name]) for name in npz.files]
        other = [name for name, array in arrays if not isinstance(array, np.ndarray)]  # np.load gives their bytes
        if other:
            raise ValueError(f"it holds {other[0]!r}, which is not a NumPy array (.npy)")
    except CompressedTooMuch:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as e:
        # MemoryError: an array's header declares more than the memory holds (damaged, or too big here)
        reason = f"{type(e).__name__}: {e}".replace("\n", " ")
        raise ValueError(f"{path} cannot be read as a .npz ({reason}): write it again with encode.py") from None
    if not arrays:
        raise ValueError(f"{path} holds no arrays: write it again with encode.py")
    return [checked_ids(path, name, array, n_vocab) for name, array in arrays]


def checked_ids(path, name, array, n_vocab):
    """`array` (the .npz's array `name`) as int32 token ids; ValueError unless it is 1-D and
    its ids are integers from 0 to n_vocab - 1."""
    where = f"{path}: array {name!r}"
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{where} holds {array.dtype}, not token ids: a .npz of a dataset holds integer arrays")
    if array.ndim != 1:
        raise ValueError(f"{where} has shape {array.shape}: a .npz of a dataset holds 1-D arrays of token ids")
    if array.size and (array.min() < 0 or array.max() >= n_vocab):
        raise ValueError(f"{where} holds ids from {array.min()} to {array.max()}: ids of this model's vocabulary "
                         f"are 0 to {n_vocab - 1} (n_vocab {n_vocab}); encode the text with this model's encoder")
    return array.astype(np.int32, copy=False)


# --- Encoding text -----------------------------------------------------------------------------

def split_text(text, size):
    """`text` cut into pieces of `size` characters or more (the last may be shorter), each cut
    where it leaves the ids unchanged (see the module's docstring): the ids of the pieces, joined,
    are `enc.encode(text)`."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = CUT.search(text, start + size)
        if cut is None:
            break
        pieces.append(text[start:cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces


def text_jobs(texts):
    """(text number, piece, ends a document) for each piece of each document of `texts`, in order."""
    for number, text in enumerate(texts):
        for document in text.split(END_OF_TEXT):
            pieces = split_text(document, PIECE_CHARS)
            for i, piece in enumerate(pieces):
                yield number, piece, i == len(pieces) - 1


def batched(pieces, size):
    """`pieces` in consecutive lists of about `size` characters: a worker's task each."""
    batches, batch, chars = [], [], 0
    for piece in pieces:
        if batch and chars + len(piece) > size:
            batches.append(batch)
            batch, chars = [], 0
        batch.append(piece)
        chars += len(piece)
    return batches + [batch] if batch else batches


_worker_encoder = None  # a pool process's Encoder


def start_worker(enc):
    """A pool process's start: it keeps `enc` for `encode_batch`."""
    global _worker_encoder
    _worker_encoder = enc
    # Ctrl-C and a closing terminal reach the whole process group: they are the parent's to
    # handle, and it ends the pool (with SIGTERM, which the workers must therefore still obey).
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):  # Windows has no SIGHUP
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def encode_batch(pieces, enc=None):
    """The int32 ids of each of `pieces`, by `enc` or the pool process's encoder."""
    enc = enc or _worker_encoder
    return [np.array(enc.encode(piece), np.int32) for piece in pieces]


def encode_pieces(enc, pieces, processes):
    """The ids of each of `pieces`, in order: in a pool of `processes` processes when there is
    more than a task's worth of text. Shows a progress bar (in characters) on a terminal."""
    batches = batched(pieces, PIECE_CHARS)
    processes = min(processes, len(batches))
    ids = []
    with tqdm(total=sum(map(len, pieces)), unit="char", unit_scale=True, desc="encoding", disable=None) as bar:
        pool = None
        try:
            if processes <= 1:
                results = (encode_batch(batch, enc) for batch in batches)
            else:
                # spawn, not fork: the caller may have started threads (TensorFlow's), which fork would copy broken
                with signals_held():  # a stop in the middle of a worker's start left it a truncated pickle to read
                    pool = multiprocessing.get_context("spawn").Pool(processes, start_worker, (without_cache(enc),))
                results = pool.imap(encode_batch, batches)
            for batch, batch_ids in zip(batches, results):
                ids += batch_ids
                bar.update(sum(map(len, batch)))
        finally:  # a stop held while the pool started is raised as the `with` ends: the pool goes too
            if pool is not None:
                pool.terminate()
    return ids


@contextlib.contextmanager
def signals_held(names=("SIGINT", "SIGTERM", "SIGHUP")):
    """A block that the signals `names` do not interrupt: each received in it is raised again
    when it ends, in turn, to the handler there was before (a SIGHUP that nohup ignores does not
    hide a SIGTERM after it). Python's handlers run in the main thread alone, and elsewhere this
    holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    numbers = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {number: signal.signal(number, lambda signum, frame: received.append(signum)) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def without_cache(enc):
    """`enc` with an empty cache, to send to other processes."""
    enc = copy.copy(enc)
    enc.cache = {}
    return enc


def encode_texts(enc, texts, processes):
    """The ids of each of `texts` as one int32 array: its documents' ids, each followed by 50256."""
    jobs = list(text_jobs(texts))
    ids = encode_pieces(enc, [piece for _, piece, _ in jobs], processes)
    end = np.array([enc.encoder[END_OF_TEXT]], np.int32)
    arrays = [[] for _ in texts]
    for (number, _, ends_document), piece_ids in zip(jobs, ids):
        arrays[number] += [piece_ids, end] if ends_document else [piece_ids]
    return [np.concatenate(parts) for parts in arrays]


# --- The dataset -------------------------------------------------------------------------------

def load_chunks(enc, path, *, n_vocab, processes=None, combine=0, exclude=None):
    """The dataset at `path` as a list of int32 token arrays, in order: one for each text file
    (its documents, each followed by 50256), and each array of each .npz. With `combine`, the
    arrays of consecutive text files are joined into arrays of `combine` tokens or more, as
    nshepperd/gpt-2's encode.py --combine joins its files: its train.py takes windows within
    one array, and refuses a .npz whose arrays are shorter on average than a window.

    `path` is a file, a folder or a glob pattern (see `dataset_files`); a file named *.npz holds
    token ids (np.savez of 1-D integer arrays, as encode.py writes), any other UTF-8 text. Text
    is encoded in `processes` processes (default: one per core). ValueError or
    FileNotFoundError, one line naming the file and the fix, for what cannot be a dataset.
    `exclude` is a file left out if `path`, a folder or a pattern, takes it in (encode.py's output,
    written there before); a file `path` names is read, whatever `exclude`.
    """
    if not is_integer(n_vocab) or n_vocab < 1:
        raise bad_argument("n_vocab", "must be a positive integer", n_vocab)
    if not is_integer(combine) or combine < 0:
        raise bad_argument("combine", "must be an integer >= 0 (0: an array for each text file)", combine)
    takes_in = exclude and os.path.exists(exclude) and not os.path.isfile(str(path))  # a file named is meant
    files = [file for file in dataset_files(path) if not (takes_in and os.path.samefile(file, exclude))]
    loaded = {file: read_npz(file, n_vocab) if is_npz(file) else read_text(file) for file in files}
    if not any(holds_data(data) for data in loaded.values()):
        raise ValueError(f"{path} holds no text (nothing, or only whitespace): a dataset needs text to train on")
    texts = [file for file in files if not is_npz(file)]
    if texts and len(enc.encoder) > n_vocab:
        raise bad_argument("n_vocab", f"must cover the encoder's {len(enc.encoder)} tokens", n_vocab)
    encoded = encode_texts(enc, [loaded[file] for file in texts], processes or os.cpu_count() or 1)
    loaded.update((file, ids) for file, ids in zip(texts, encoded))
    return combined([(loaded[file], is_npz(file)) for file in files], combine)


def combined(files, combine):
    """The arrays of `files`, [(a text file's array, False) or (an .npz's arrays, True)], with
    consecutive text files' arrays joined into arrays of `combine` tokens or more (the last may
    be shorter). Each text file's array ends with 50256, which keeps its documents apart from
    the next file's; an .npz's arrays stay as they were."""
    chunks, texts, tokens = [], [], 0
    for data, from_npz in files:
        if from_npz:
            chunks += ([joined(texts)] if texts else []) + data
            texts, tokens = [], 0
            continue
        texts.append(data)
        tokens += len(data)
        if tokens >= combine:
            chunks.append(joined(texts))
            texts, tokens = [], 0
    return chunks + ([joined(texts)] if texts else [])


def joined(arrays):
    """`arrays` as one array; the one itself, not a copy, when there is one."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def holds_data(data):
    """Whether a file's text (a str) or token arrays (a list) hold something to train on."""
    return bool(data.strip()) if isinstance(data, str) else any(len(array) for array in data)


def load_dataset(enc, path, *, n_vocab, processes=None):
    """The dataset at `path` as one int32 array of token ids: `load_chunks`'s arrays, joined,
    each let go once it is copied: the memory holds the dataset once, and its largest array."""
    chunks = load_chunks(enc, path, n_vocab=n_vocab, processes=processes)
    if len(chunks) == 1:
        return chunks[0]
    tokens = np.empty(sum(map(len, chunks)), np.int32)
    end = len(tokens)
    while chunks:  # the last first: pop() drops the list's reference to it
        chunk = chunks.pop()
        tokens[end - len(chunk):end] = chunk
        end -= len(chunk)
    return tokens


# --- Windows -----------------------------------------------------------------------------------

class Windows:
    """Fixed-length windows of a token stream, in a seeded order, numbered so that a run can
    resume at an exact position.

    Epoch e's windows are `per_epoch` disjoint windows, the stream cut in `length`s from a
    random shift (the tokens left over move the cuts each epoch), in a random order; both are
    drawn from `np.random.default_rng([seed, e])`. Window number p is the (p % per_epoch)th of
    epoch p // per_epoch: `batch(p, n)` is windows p .. p + n - 1, wherever the epochs change.

    A stream shorter than `length` is one window of all of it. A window needs 2 tokens or more:
    the model learns to predict each token from those before it.
    """

    def __init__(self, tokens, length, seed):
        self.tokens = np.asarray(tokens, np.int32)
        if self.tokens.ndim != 1 or len(self.tokens) < 2:
            raise bad_argument("tokens", "must be a 1-D stream of 2 tokens or more (a window predicts each token "
                                         "from those before it)", f"shape {self.tokens.shape}")
        if not is_integer(length) or length < 2:
            raise bad_argument("length", "must be an integer >= 2", length)
        if not is_integer(seed) or seed < 0:
            raise bad_argument("seed", "must be an integer >= 0", seed)
        self.length = min(length, len(self.tokens))
        self.per_epoch = len(self.tokens) // self.length
        self.seed = seed
        self._epoch_starts = None, None  # (epoch, its starts): drawn once per epoch, not once per batch

    def starts(self, epoch):
        """Where each of epoch `epoch`'s windows starts, in the epoch's order (read-only)."""
        if self._epoch_starts[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            shift = rng.integers(0, len(self.tokens) % self.length + 1)
            starts = rng.permutation(shift + self.length * np.arange(self.per_epoch))
            starts.flags.writeable = False
            self._epoch_starts = epoch, starts
        return self._epoch_starts[1]

    def batch(self, position, size):
        """Windows number position .. position + size - 1, as int32 [size, length]."""
        if not is_integer(position) or position < 0:
            raise bad_argument("position", "must be an integer >= 0", position)
        if not is_integer(size) or size < 1:
            raise bad_argument("size", "must be a positive integer", size)
        numbers = np.arange(position, position + size)
        epochs, indices = np.divmod(numbers, self.per_epoch)
        starts = np.empty(size, np.int64)
        for epoch in np.unique(epochs):
            starts[epochs == epoch] = self.starts(int(epoch))[indices[epochs == epoch]]
        return self.tokens[starts[:, None] + np.arange(self.length)]  # [size, length]
