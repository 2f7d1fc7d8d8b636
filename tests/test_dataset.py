"""Training data: known ids of documents, text cut for the pool without changing its ids, the
dataset's files and .npz arrays, one-line errors, and the windows a run resumes in."""
import os
import pickle
import random
import re
import zipfile

import numpy as np
import pytest

import dataset

N_VOCAB = 50257
EOT = 50256


def write(folder, files):
    """Writes {relative path: str (UTF-8) or bytes} under `folder`; returns the folder as a str."""
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(folder)


def expected(enc, *texts):
    """The stream the texts (one per file) should give: each document's `enc.encode`, then 50256."""
    return [i for text in texts for document in text.split("<|endoftext|>") for i in enc.encode(document) + [EOT]]


def as_read(text):
    """`text` with its line endings made "\n", as Python's text mode reads it."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- Known answers -------------------------------------------------------------------------------

def test_endoftext_in_the_text_is_one_id_and_each_file_ends_with_one(enc, tmp_path):
    path = write(tmp_path, {"a.txt": "hello world<|endoftext|>\nhi"})
    tokens = dataset.load_dataset(enc, path, n_vocab=N_VOCAB)
    assert tokens.dtype == np.int32
    assert tokens.tolist() == [31373, 995, EOT, 198, 5303, EOT]  # never the 7 tokens BPE makes of it


def test_documents_encode_as_the_plain_encoder_joined_by_endoftext(enc, tmp_path):
    texts = ["Hello world.\n\nSecond para<|endoftext|>Doc  two \n\n  indented\n", "café ☃ 😀\r\n'S it's\n",
             "<|endoftext|><|endoftext|>x<|endoftext|>"]
    path = write(tmp_path, {f"{n}.txt": text for n, text in enumerate(texts)})
    tokens = dataset.load_dataset(enc, path, n_vocab=N_VOCAB)
    assert tokens.tolist() == expected(enc, *map(as_read, texts))


# --- Cutting text for the pool -------------------------------------------------------------------

def varied_text(seed, n=3000):
    """Text of the parts where GPT-2's pattern is most particular: runs of newlines and spaces,
    spaces after newlines, contractions, unicode letters, numbers, other whitespace."""
    parts = ["\n", "\n\n", " ", "  ", "\t", "\r", "\u00a0", "\u2028", "\n ", " \n", "a", "word", " word", "é",
             "☃", "😀", "日本", "'s", "'S", "12", " 3", ".", "?!", "--"]
    rng = random.Random(seed)
    return "".join(rng.choice(parts) for _ in range(n))


@pytest.mark.parametrize("seed", [0, 1])
def test_cutting_before_a_newline_then_a_character_keeps_the_ids(enc, seed):
    text = varied_text(seed)
    whole = enc.encode(text)
    for size in (1, 2, 3, 7, 40, 500):
        pieces = dataset.split_text(text, size)
        assert "".join(pieces) == text and len(pieces) > 1
        assert [i for piece in pieces for i in enc.encode(piece)] == whole, size


def test_cutting_after_the_newline_would_change_the_ids(enc):
    # Why the cut is before the "\n": "\n\n" at the end of a piece would become one token.
    assert enc.encode("a\n\nb") == [64, 198, 198, 65]
    assert enc.encode("a\n\n") + enc.encode("b") == [64, 628, 65]
    assert dataset.split_text("a\n\nb", 1) == ["a\n", "\nb"]


def test_the_pool_gives_the_ids_of_one_process(enc, tmp_path, monkeypatch):
    texts = [varied_text(2, 400), "short<|endoftext|>" + varied_text(3, 300), "end"]
    path = write(tmp_path, {f"{n}.txt": text for n, text in enumerate(texts)})
    monkeypatch.setattr(dataset, "PIECE_CHARS", 50)  # many tasks, each cut in pieces
    pooled = dataset.load_chunks(enc, path, n_vocab=N_VOCAB, processes=2)
    assert [chunk.tolist() for chunk in pooled] == [expected(enc, as_read(text)) for text in texts]


# --- Files and .npz ------------------------------------------------------------------------------

def test_a_folder_is_its_files_sorted_at_any_depth_hidden_ones_skipped(enc, tmp_path):
    path = write(tmp_path / "data", {"b.txt": "b", "a/z.txt": "z", "a/c.txt": "c", ".hidden": "h",
                                     ".git/config": "g", "a/.x/y.txt": "y"})
    assert dataset.load_dataset(enc, path, n_vocab=N_VOCAB).tolist() == expected(enc, "c", "z", "b")


def test_a_glob_is_its_matches_sorted(enc, tmp_path):
    write(tmp_path, {"b.txt": "b", "a.txt": "a", "c.md": "c", "sub/d.txt": "d"})
    assert dataset.load_dataset(enc, str(tmp_path / "*.txt"), n_vocab=N_VOCAB).tolist() == expected(enc, "a", "b")
    assert dataset.load_dataset(enc, str(tmp_path / "**" / "*.txt"),
                                n_vocab=N_VOCAB).tolist() == expected(enc, "a", "b", "d")


def test_npz_arrays_are_read_in_order_as_int32(enc, tmp_path):
    path = str(tmp_path / "data.npz")
    np.savez_compressed(path, *[np.array(a, np.int64) for a in ([5, 6], [EOT], list(range(12)))])
    chunks = dataset.load_chunks(enc, path, n_vocab=N_VOCAB)
    assert [c.tolist() for c in chunks] == [[5, 6], [EOT], list(range(12))]
    assert {c.dtype for c in chunks} == {np.dtype(np.int32)}


def test_combine_joins_text_files_into_arrays_of_that_many_tokens(enc, tmp_path):
    """nshepperd/gpt-2's train.py takes windows within one array, and refuses a .npz whose arrays
    are shorter on average than a window: its encode.py joins files (--combine); so do we, with
    50256 between documents. An .npz's arrays stay as they were, between the texts' arrays."""
    texts = {f"{i:02}.txt": f"Document number {i} is short." for i in range(13)}
    np.savez(tmp_path / "05a.npz", np.array([1, 2, 3]), np.array([4]))
    write(tmp_path, texts)
    each = dataset.load_chunks(enc, str(tmp_path), n_vocab=N_VOCAB)
    assert len(each) == 15 and [c.tolist() for c in each[6:8]] == [[1, 2, 3], [4]]
    assert {len(c) for i, c in enumerate(each) if i not in (6, 7)} == {7}  # 6 tokens and 50256 a text file
    chunks = dataset.load_chunks(enc, str(tmp_path), n_vocab=N_VOCAB, combine=20)
    assert [len(c) for c in chunks] == [21, 21, 3, 1, 21, 21, 7]
    assert [c.tolist() for c in chunks[2:4]] == [[1, 2, 3], [4]]
    assert np.concatenate(chunks).tolist() == np.concatenate(each).tolist()
    assert all(c[-1] == EOT for i, c in enumerate(chunks) if i not in (2, 3))  # documents stay apart
    with pytest.raises(ValueError, match=re.escape("combine must be an integer >= 0")):
        dataset.load_chunks(enc, str(tmp_path), n_vocab=N_VOCAB, combine=-1)


@pytest.mark.parametrize("files, path, message", [
    ({}, "missing", "missing not found: give a text file, a folder, a .npz, or a glob pattern"),
    ({"a.txt": "a"}, "*.md", "*.md matches no files: check the pattern"),
    ({"empty/.keep": ""}, "empty", "empty is a folder with no files: put the dataset's text files"),
    ({"a.txt": ""}, "a.txt", "a.txt holds no text (nothing, or only whitespace)"),
    ({"a.txt": " \n\t\n", "b.txt": "\n"}, ".", ". holds no text (nothing, or only whitespace)"),
    ({"a.txt": b"caf\xe9 ok"}, "a.txt", "a.txt is not UTF-8 text (invalid continuation byte at byte 3)"),
    ({"a.npz": b"not a zip"}, "a.npz", "a.npz is not a .npz (a zip archive of arrays)"),
    ({"a.npz": b"PK\x05\x06" + bytes(18)}, "a.npz", "a.npz holds no arrays"),
])
def test_what_cannot_be_a_dataset_is_one_line_naming_it(enc, tmp_path, monkeypatch, files, path, message):
    write(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        dataset.load_dataset(enc, path, n_vocab=N_VOCAB)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("array, message", [
    (np.array([0.5, 1.0]), "array 'arr_0' holds float64, not token ids"),
    (np.array([True]), "array 'arr_0' holds bool, not token ids"),
    (np.zeros((2, 3), np.int32), "array 'arr_0' has shape (2, 3): a .npz of a dataset holds 1-D arrays"),
    (np.array([3, -1]), "array 'arr_0' holds ids from -1 to 3: ids of this model's vocabulary are 0 to 50256"),
    (np.array([3, 50257, 70000]), "array 'arr_0' holds ids from 3 to 70000: ids of this model's vocabulary are "
                                  "0 to 50256 (n_vocab 50257)"),
])
def test_npz_arrays_must_be_token_ids(enc, tmp_path, array, message):
    path = str(tmp_path / "bad.npz")
    np.savez(path, array)
    with pytest.raises(ValueError) as e:
        dataset.load_dataset(enc, path, n_vocab=N_VOCAB)
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)


def test_npz_members_that_are_not_arrays_are_one_line(enc, tmp_path):
    # np.load gives a member that is not a .npy (a name without .npy, or a pickle under one) as its bytes
    for name, content in (("readme.txt", b"hi"), ("arr_0.npy", pickle.dumps([1, 2]))):
        path = str(tmp_path / "bad.npz")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(name, content)
        with pytest.raises(ValueError, match=re.escape(f"{path} cannot be read as a .npz (ValueError: it holds "
                                                       f"{name.removesuffix('.npy')!r}, which is not a NumPy array")):
            dataset.load_dataset(enc, path, n_vocab=N_VOCAB)


def test_an_npz_declaring_an_array_larger_than_memory_is_one_line(enc, tmp_path):
    header = b"{'descr': '<i4', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += b" " * (117 - len(header)) + b"\n"
    path = str(tmp_path / "forged.npz")
    with zipfile.ZipFile(path, "w") as z:  # 150 bytes saying 4 TB follow
        z.writestr("arr_0.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(16))
    with pytest.raises(ValueError, match=re.escape(f"{path} cannot be read as a .npz (MemoryError: ")):
        dataset.load_dataset(enc, path, n_vocab=N_VOCAB)


def npy_header(shape, dtype="<i4"):
    """The .npy format 1.0 header of an array of this shape."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (117 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_an_npz_that_inflates_far_beyond_its_size_is_refused_before_it_is_read(enc, tmp_path, monkeypatch):
    """A zip bomb: 2e9 ids (8 GB) in 7.8 MB took 16 GB and trained. Here 4e6 ids (16 MB) in 16 KB,
    with the size read whatever the compression lowered to 1 MiB; np.savez's uncompressed
    file of the same ids is read."""
    monkeypatch.setattr(dataset, "UNCHECKED_BYTES", 1 << 20)
    path = str(tmp_path / "bomb.npz")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("arr_0.npy", "w") as member:
        member.write(npy_header((4_000_000,)))
        for _ in range(16):
            member.write(bytes(1_000_000))
    size = os.path.getsize(path)
    with pytest.raises(ValueError) as e:
        dataset.load_dataset(enc, path, n_vocab=N_VOCAB)
    assert str(e.value) == (
        f"{path} declares arrays of 16,000,128 bytes in a file of {size:,} bytes, {16_000_128 / size:,.0f} times as "
        f"many: more than token ids compress (text's, about 3 times; at most 100 is read), so a damaged or crafted "
        f"file. A text repeated over and over compresses so: train on the text itself, or save its ids "
        f"uncompressed (np.savez)")
    np.savez(tmp_path / "plain.npz", np.zeros(4_000_000, np.int32))
    assert dataset.load_dataset(enc, str(tmp_path / "plain.npz"), n_vocab=N_VOCAB).shape == (4_000_000,)


def test_npz_arrays_of_int32_are_not_copied():
    """Read as int32, a dataset's arrays are kept as read: a copy would take the memory twice."""
    array = np.arange(5, dtype=np.int32)
    assert dataset.checked_ids("data.npz", "arr_0", array, N_VOCAB) is array


def test_a_pipe_or_broken_link_in_a_folder_is_named_not_waited_on(enc, tmp_path):
    write(tmp_path / "data", {"a.txt": "a"})
    os.mkfifo(tmp_path / "data" / "fifo")  # reading it would wait for a writer forever
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'data' / 'fifo'} is not a regular file")):
        dataset.dataset_files(str(tmp_path / "data"))
    os.remove(tmp_path / "data" / "fifo")
    os.symlink("nowhere", tmp_path / "data" / "link")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'data' / 'link'} is a broken or looping symbolic")):
        dataset.dataset_files(str(tmp_path / "data" / "*"))


def test_a_glob_through_a_link_loop_reads_each_file_once(enc, tmp_path):
    write(tmp_path / "data", {"a.txt": "a"})
    os.symlink("../data", tmp_path / "data" / "self")  # `**` follows it round and round
    assert dataset.dataset_files(str(tmp_path / "data" / "**" / "*.txt")) == [str(tmp_path / "data" / "a.txt")]
    # `dir/**`: at the depth the system stops resolving the loop (ELOOP), os.walk took the link for a file
    assert dataset.dataset_files(str(tmp_path / "data" / "**")) == [str(tmp_path / "data" / "a.txt")]


# --- Windows -------------------------------------------------------------------------------------

def test_each_epochs_windows_are_disjoint_and_inside_the_stream():
    windows = dataset.Windows(np.arange(103), 10, seed=0)
    assert (windows.length, windows.per_epoch) == (10, 10)
    for epoch in range(5):
        batch = windows.batch(epoch * 10, 10)
        assert batch.shape == (10, 10) and batch.dtype == np.int32
        assert len(set(batch.ravel())) == 100 and batch.max() <= 102
        assert (np.diff(batch, axis=1) == 1).all()  # windows of the stream, in order within each


def test_the_seed_sets_the_order():
    tokens = np.arange(1000)
    first = dataset.Windows(tokens, 10, seed=1).batch(0, 100)
    assert (dataset.Windows(tokens, 10, seed=1).batch(0, 100) == first).all()
    assert not (dataset.Windows(tokens, 10, seed=2).batch(0, 100) == first).all()
    assert not (dataset.Windows(tokens, 10, seed=1).batch(100, 100) == first).all()  # epoch 1 has its own


def test_batches_resume_exactly_across_epochs():
    windows = dataset.Windows(np.arange(57), 8, seed=3)  # 7 windows an epoch
    whole = windows.batch(4, 20)
    assert (np.concatenate([windows.batch(4, 5), windows.batch(9, 15)]) == whole).all()
    assert (windows.batch(7, 7) == windows.tokens[windows.starts(1)[:, None] + np.arange(8)]).all()


def test_a_stream_shorter_than_the_window_is_one_window():
    windows = dataset.Windows([5, 6, 7], 1024, seed=0)
    assert (windows.length, windows.per_epoch) == (3, 1)
    assert windows.batch(0, 2).tolist() == [[5, 6, 7], [5, 6, 7]]


@pytest.mark.parametrize("tokens, length, message", [
    ([7], 1024, "tokens must be a 1-D stream of 2 tokens or more (a window predicts each token"),
    ([], 1024, "tokens must be a 1-D stream of 2 tokens or more"),
    ([1, 2, 3], 1, "length must be an integer >= 2. Received: 1"),
])
def test_a_window_needs_two_tokens(tokens, length, message):
    with pytest.raises(ValueError) as e:
        dataset.Windows(tokens, length, seed=0)
    assert str(e.value).startswith(message)
