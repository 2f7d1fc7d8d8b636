"""Tokenizer tests: known ids, equality with the original algorithm, round trips, errors.

`bench/original_encoder.py` is the original openai/gpt-2 encoder, kept as plain and slow as it
was; `src/encoder.py` must give its ids for every text. The known answers were computed with it
once and checked by eye, so they hold whatever either implementation does.
"""
import codecs
import doctest
import json
import os
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import encoder
from bench import original_encoder


def original(folder):
    """The original algorithm's encoder of the vocabulary in `folder`."""
    return original_encoder.get_encoder(os.path.basename(folder), os.path.dirname(folder))


def original_pieces(text):
    return original_encoder.Encoder({}, []).pat.findall(text)


@pytest.fixture(scope="session")
def ref(vocab_dir):
    return original(vocab_dir)


# Computed once with the original algorithm and read through token by token (e.g. "I'M" is "I", "'",
# "M": the original's contractions are lower case only).
KNOWN = [
    ("hello world", [31373, 995]),
    ("Hello World!", [15496, 2159, 0]),
    ("", []),
    (" ", [220]),
    ("   ", [220, 220, 220]),
    ("\t", [197]),
    ("\n", [198]),
    ("a  b", [64, 220, 275]),
    ("a   b", [64, 220, 220, 275]),
    ("a\tb", [64, 197, 65]),
    ("a \t b", [64, 220, 197, 275]),
    ("line one\nline two\n", [1370, 530, 198, 1370, 734, 198]),
    ("para\n\n\nnext", [1845, 64, 628, 198, 19545]),
    ("trailing spaces   ", [9535, 4386, 9029, 220, 220, 220]),
    ("x\r\ny\r\n", [87, 201, 198, 88, 201, 198]),
    ("    indented = 1", [220, 220, 220, 773, 4714, 796, 352]),
    ("def f(x):\n    return x ** 2  # square\n",
     [4299, 277, 7, 87, 2599, 198, 220, 220, 220, 1441, 2124, 12429, 362, 220, 1303, 6616, 198]),
    ("I'm here", [40, 1101, 994]),
    ("I'M HERE", [40, 6, 44, 15698]),
    ("don't", [9099, 470]),
    ("DON'T", [41173, 6, 51]),
    ("it's John's", [270, 338, 1757, 338]),
    ("IT'S", [2043, 6, 50]),
    ("'s", [338]),
    ("we'll they've you're I'd", [732, 1183, 484, 1053, 345, 821, 314, 1549]),
    ("WE'LL THEY'VE YOU'RE I'D", [8845, 6, 3069, 33302, 6, 6089, 7013, 6, 2200, 314, 6, 35]),
    ("1234567890", [10163, 2231, 30924, 3829]),
    ("3.14159265358979", [18, 13, 1415, 19707, 22980, 2327, 4531, 3720]),
    ("12,345,678 and 2024-01-31", [1065, 11, 27712, 11, 30924, 290, 48609, 12, 486, 12, 3132]),
    (" 00000000000000000000", [220, 25645, 2388]),
    ("😀", [47249, 222]),
    ("👍🏽👍🏿", [41840, 235, 8582, 237, 121, 41840, 235, 8582, 237, 123]),
    ("👨\u200d👩\u200d👧\u200d👦", [41840, 101, 447, 235, 41840, 102, 447, 235, 41840, 100, 447, 235, 41840, 99]),
    ("🇯🇵🇫🇷", [8582, 229, 107, 8582, 229, 113, 8582, 229, 104, 8582, 229, 115]),
    ("🏳️\u200d🌈", [8582, 237, 111, 37929, 447, 235, 8582, 234, 230]),
    ("你好，世界", [19526, 254, 25001, 121, 171, 120, 234, 10310, 244, 45911, 234]),
    ("日本語のテキスト", [33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302]),
    ("한국어", [47991, 250, 166, 113, 255, 168, 244, 112]),
    ("e\u0301cole", [68, 136, 223, 1073, 293]),  # a combining acute accent
    ("\u00e9cole", [2634, 1073, 293]),
    ("Zürich naïve café", [57, 9116, 7527, 41492, 40304]),
    ("Привет, мир!", [140, 253, 21169, 18849, 38857, 16843, 20375, 11, 12466, 120, 18849, 21169, 0]),
    ("<|endoftext|>", [27, 91, 437, 1659, 5239, 91, 29]),
    (" <|endoftext|>", [1279, 91, 437, 1659, 5239, 91, 29]),
    ('{"key": [1, 2, 3]}', [4895, 2539, 1298, 685, 16, 11, 362, 11, 513, 48999]),
    ("https://example.com/a?b=c&d=e", [5450, 1378, 20688, 13, 785, 14, 64, 30, 65, 28, 66, 5, 67, 28, 68]),
    ("\u00a0nbsp\u3000ideographic", [1849, 77, 24145, 5099, 222, 485, 6826]),
    ("\x00\x1f\x7f", [188, 219, 221]),
    ("a" * 1000, [24794] * 250),  # "aaaa"
    ("abc" * 400, [39305] * 400),  # "abc"
    ("9" * 1000, [24214] * 250),  # "9999"
    ("😀" * 300, [47249, 222] * 300),
]


@pytest.mark.parametrize("text, ids", KNOWN, ids=[repr(text[:24]) for text, _ in KNOWN])
def test_known_ids(enc, text, ids):
    assert enc.encode(text) == ids
    assert enc.decode(ids) == text


def test_known_ids_are_the_originals(ref):
    assert [ref.encode(text) for text, _ in KNOWN] == [ids for _, ids in KNOWN]


def test_endoftext_is_text_and_its_id_is_in_the_encoder(enc):
    assert enc.encoder["<|endoftext|>"] == 50256
    assert enc.decoder[50256] == "<|endoftext|>"
    assert len(enc.encode("<|endoftext|>")) == 7
    assert enc.decode([31373, 50256]) == "hello<|endoftext|>"


def test_module_functions_are_the_originals():
    table = encoder.bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table == original_encoder.bytes_to_unicode()
    assert encoder.get_pairs(("h", "e", "l", "l", "o")) == {("h", "e"), ("e", "l"), ("l", "l"), ("l", "o")}
    assert encoder.get_pairs(("a",)) == set()


def test_bpe_keeps_the_originals_form(enc, ref):
    for token in ("Ġtokenizer", "hello", "ĠnaÃ¯ve", "a", "ðŁĺĢ"):
        assert enc.bpe(token) == ref.bpe(token)
    assert enc.bpe("Ġtokenizer") == "Ġtoken izer"


def test_every_token_is_its_own_bpe(enc, ref):
    # What lets encode() skip BPE for a piece that is a whole token of GPT-2's files (their SHA-256
    # in encoder.GPT2_SHA256): BPE makes each token from its own bytes, the original's BPE as ours.
    assert enc.tokens_are_own_bpe
    tokens = [t for t in enc.encoder if t != "<|endoftext|>"]
    assert [ref.bpe(t) for t in tokens] == tokens
    assert [enc.bpe(t) for t in tokens] == tokens


def test_a_token_that_is_not_its_own_bpe_is_merged_as_the_original_does(tmp_path):
    # ("b", "c") ranks first, so BPE never makes "abc" from its own bytes: only GPT-2's files are
    # taken to have every token its own BPE.
    write_vocabulary(tmp_path / "toy", [("b", "c"), ("a", "b"), ("ab", "c")])
    enc = encoder.get_encoder("toy", str(tmp_path))
    assert not enc.tokens_are_own_bpe
    assert enc.encode("abc") == original(str(tmp_path / "toy")).encode("abc") == [enc.encoder["a"], enc.encoder["bc"]]


def test_constructor_signature(vocab_dir):
    with open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8") as f:
        vocabulary = json.load(f)
    with open(os.path.join(vocab_dir, "vocab.bpe"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:-1]]
    enc = encoder.Encoder(vocabulary, merges, errors="strict")
    assert enc.encode("hello world") == [31373, 995]
    assert enc.errors == "strict"
    with pytest.raises(UnicodeDecodeError):
        enc.decode([47249])  # the first three bytes of a four-byte emoji


def mixed_text(seed, size):
    """Prose, code, numbers, whitespace runs and non-Latin scripts, shuffled together."""
    rng = random.Random(seed)
    words = ["the", "The", "of", "tokenization", "isn't", "DON'T", "we'll", "x", "naïve", "café", "über", "Ærø",
             "日本語", "中文字符", "한국어", "Привет", "γεια", "مرحبا", "e\u0301", "😀", "👍🏽", "👨\u200d👩\u200d👧",
             "🇯🇵", "3.14", "1234567", "0x1F", "def", "return", "(x)", "{}", "->", "...", "--", "'s", "'S",
             "\u00a0", "\u3000", "\x0b", "\x1c"]
    seps = [" ", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "    ", ", ", ". ", "", " \n", "\n    "]
    return "".join(rng.choice(words) + rng.choice(seps) for _ in range(size))


def test_long_mixed_text_matches_the_original(enc, ref):
    text = mixed_text(seed=1, size=40_000)  # ~250 KB of prose, code, scripts and emoji
    ids = ref.encode(text)
    assert enc.encode(text) == ids
    assert encoder.Encoder(enc.encoder, list(enc.bpe_ranks)).encode(text) == ids  # BPE for every piece
    assert enc.decode(enc.encode(text)) == text


def test_a_fresh_encoder_and_a_warm_one_agree(vocab_dir, enc):
    text = mixed_text(seed=2, size=5000)
    first = encoder.get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir)).encode(text)
    assert first == enc.encode(text) == enc.encode(text)


def test_cache_remembers_each_piece_s_ids(vocab_dir):
    enc = encoder.get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))
    assert enc.cache == {}
    enc.encode("hello world, hello")
    assert enc.cache == {"hello": (31373,), " world": (995,), ",": (11,), " hello": (23748,)}


def test_cache_stays_bounded(vocab_dir, monkeypatch, ref):
    monkeypatch.setattr(encoder, "_CACHE_PIECES", 500)
    enc = encoder.get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))
    text = " ".join(f"w{i}x" for i in range(5000))  # 5000 distinct numbers
    assert enc.encode(text) == ref.encode(text)
    assert 0 < len(enc.cache) <= 500


def test_encoder_pickles_with_its_cache(enc):
    copy = pickle.loads(pickle.dumps(enc))
    assert copy.encode("hello world") == [31373, 995] and copy.cache[" world"] == (995,)


def write_vocabulary(folder, merges):
    """A vocabulary of the 256 byte tokens and what `merges` make, in GPT-2's file formats."""
    folder.mkdir()
    tokens = dict.fromkeys([*encoder.bytes_to_unicode().values(), *(left + right for left, right in merges),
                            "<|endoftext|>"])
    (folder / "encoder.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}), encoding="utf-8")
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def random_merges(rng, symbols, count, in_order):
    """`count` merges of `symbols` and what earlier ones make; out of order, shuffled after."""
    tokens, merges = list(symbols), []
    while len(merges) < count:
        pair = (rng.choice(tokens), rng.choice(tokens))
        if pair not in merges and len(pair[0] + pair[1]) <= 12:
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
    if not in_order:
        rng.shuffle(merges)
    return merges


def is_in_order(merges):
    """Whether each merge joins only bytes and tokens that better-ranked merges made."""
    made = set()
    for left, right in merges:
        if not all(len(token) == 1 or token in made for token in (left, right)):
            return False
        made.add(left + right)
    return True


@pytest.mark.parametrize("in_order", [True, False])
def test_any_vocabulary_matches_the_original(tmp_path, in_order):
    # Out of order, a merge may make a pair that ranks before the round's, which waits for the next round.
    rng = random.Random(4)
    merges = random_merges(rng, "abcd", 60, in_order)
    assert is_in_order(merges) is in_order
    write_vocabulary(tmp_path / "toy", merges)
    enc = encoder.get_encoder("toy", str(tmp_path))
    ref = original(str(tmp_path / "toy"))
    for length in (5, 30, 200, 1000):  # short pieces, and long ones (past _LONG_PIECE)
        text = "".join(rng.choices("abcd", k=length))
        assert enc.encode(text) == ref.encode(text), text


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 ** 32), st.booleans(), st.lists(st.sampled_from("abc"), max_size=300))
def test_both_merge_loops_are_the_originals_bpe(seed, in_order, symbols):
    merges = random_merges(random.Random(seed), "abc", 30, in_order)
    ranks = {merge: rank for rank, merge in enumerate(merges)}
    bpe = original_encoder.Encoder({}, merges).bpe("".join(symbols)).split(" ") if symbols else []
    assert encoder.merge_pairs(list(symbols), ranks) == bpe
    assert encoder.merge_pairs_long(list(symbols), ranks) == bpe


def test_a_round_merges_each_occurrence_before_the_pairs_it_makes(tmp_path):
    # Out of order: ("ab", "a") ranks before ("a", "b"), which makes "ab". The original's round
    # merges both pairs "a", "b" of "abab" before it looks at ("ab", "a").
    merges = [("ab", "a"), ("a", "b")]
    ranks = {merge: rank for rank, merge in enumerate(merges)}
    assert encoder.merge_pairs(list("abab"), ranks) == ["ab", "ab"]
    assert encoder.merge_pairs_long(list("abab"), ranks) == ["ab", "ab"]
    write_vocabulary(tmp_path / "toy", merges)
    assert encoder.get_encoder("toy", str(tmp_path)).encode("abab") == original(str(tmp_path / "toy")).encode("abab")


def test_a_long_run_of_one_character(enc, ref):
    # The original is quick on these (a few rounds); its quadratic case is a long varied piece.
    assert enc.encode("a" * 100_000) == ref.encode("a" * 100_000) == [24794] * 25_000
    assert enc.encode(" " + "9" * 99_999) == ref.encode(" " + "9" * 99_999)


def test_long_words_match_the_original(enc, ref):
    rng = random.Random(3)
    for alphabet in ("abcdefghijklmnopqrstuvwxyz", "0123456789", "日本語中文", "😀👍🏽é"):
        word = "".join(rng.choices(alphabet, k=1500))
        assert enc.encode(word) == ref.encode(word)
        assert enc.encode(" " + word + " ") == ref.encode(" " + word + " ")


no_surrogates = st.characters(blacklist_categories=("Cs",))
# Fragments that meet at the places where the pattern is subtle: spaces, apostrophes, digits, marks.
fragments = st.lists(st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "'", "'s", "'S", "'ll", "a", "Z", "é", "1", "23",
                                      "\u0301", "\u00a0", "\u3000", "日", "😀", "\u200d", ".", "!?", "\x1c"]))


@settings(max_examples=300, deadline=None)
@given(st.text(no_surrogates))
def test_random_text_round_trips_and_matches_the_original(enc, ref, text):
    ids = enc.encode(text)
    assert enc.decode(ids) == text
    assert ids == ref.encode(text)


@settings(max_examples=300, deadline=None)
@given(fragments.map("".join))
def test_tricky_joins_match_the_original(enc, ref, text):
    assert enc.encode(text) == ref.encode(text)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(max_codepoint=127)) | st.text(no_surrogates) | fragments.map("".join))
def test_pattern_cuts_like_the_original(enc, text):
    assert enc.pat.findall(text) == original_pieces(text)


def test_decode_of_a_split_character_replaces_it(enc):
    assert enc.decode([47249]) == "\ufffd"  # three of the emoji's four bytes
    assert enc.decode([]) == ""


def test_decode_bytes_gives_the_utf8_bytes(enc):
    assert enc.decode_bytes([31373, 995]) == b"hello world"
    assert enc.decode_bytes([47249]) == b"\xf0\x9f\x98"  # three of the emoji's four bytes
    assert enc.decode_bytes([47249, 222]) == "😀".encode("utf-8")
    assert enc.decode_bytes([]) == b""
    assert enc.decode_bytes(iter((31373, 50256))) == b"hello<|endoftext|>"  # any iterable of ids


@pytest.mark.parametrize("text, ids", KNOWN, ids=[repr(text[:24]) for text, _ in KNOWN])
def test_decode_bytes_of_known_ids(enc, text, ids):
    assert enc.decode_bytes(ids) == text.encode("utf-8")


def test_decode_bytes_streams_a_character_split_between_tokens(enc):
    text = mixed_text(seed=5, size=300)
    ids = enc.encode(text)
    chunks = [enc.decode_bytes([i]) for i in ids]
    assert sum(len(chunk.decode("utf-8", "replace")) != len(chunk.decode("utf-8", "ignore")) for chunk in chunks) > 0
    stream = codecs.getincrementaldecoder("utf-8")()
    assert "".join(stream.decode(chunk) for chunk in chunks) + stream.decode(b"", final=True) == text


def test_docstring_examples(enc):
    # The examples load GPT-2's vocabulary by name: get_encoder gives the one the tests use.
    tests = doctest.DocTestFinder().find(encoder, extraglobs={"enc": enc, "get_encoder": lambda *names: enc})
    assert sum(len(test.examples) for test in tests) >= 10
    runner = doctest.DocTestRunner()
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def assert_one_line(error):
    assert "\n" not in str(error.value)


def test_missing_vocabulary_names_the_file_and_the_download(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        encoder.get_encoder("124M", str(tmp_path))
    assert str(tmp_path / "124M" / "encoder.json") in str(error.value)
    assert f"python3 download_model.py 124M --models_dir {tmp_path}" in str(error.value)
    assert_one_line(error)


def test_missing_vocabulary_in_models_needs_no_models_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        encoder.get_encoder("355M", "models")
    assert "`python3 download_model.py 355M`" in str(error.value)
    assert_one_line(error)


def test_missing_vocab_bpe_names_it(tmp_path, vocab_dir):
    os.remove(copy_vocabulary(vocab_dir, tmp_path / "m") / "vocab.bpe")
    with pytest.raises(FileNotFoundError, match="vocab.bpe") as error:
        encoder.get_encoder("m", str(tmp_path))
    assert_one_line(error)


def real_encoder_json(vocab_dir, **changes):
    """GPT-2's encoder.json with `changes` (token=id, or token=None to leave it out), as text."""
    with open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8") as f:
        tokens = json.load(f)
    for token, i in changes.items():
        tokens.pop(token) if i is None else tokens.__setitem__(token, i)
    return json.dumps(tokens)


@pytest.mark.parametrize("file, content, message", [
    ("encoder.json", '{"a": 1,', "is not valid JSON"),
    ("encoder.json", "[1, 2]", "is not a GPT-2 encoder.json"),
    ("encoder.json", '{"a": "b"}', "is not a GPT-2 encoder.json"),
    ("encoder.json", '{"a": -1}', "is not a GPT-2 encoder.json"),
    ("encoder.json", '{"a": true}', "is not a GPT-2 encoder.json"),
    ("encoder.json", "[" * 100_000 + "]" * 100_000, r"is not a GPT-2 encoder.json \(.*nesting too deep"),
    ("encoder.json", '{"a": ' + "[" * 100_000, r"is not a GPT-2 encoder.json \(.*nesting too deep"),
    ("encoder.json", '{"a": 1' + "0" * 10_000 + "}", r"is not a GPT-2 encoder.json \(a number too long"),
    ("encoder.json", "{}", r"\(no <\|endoftext\|> token\)"),
    ("encoder.json", lambda d: real_encoder_json(d, **{"<|endoftext|>": None}), r"\(no <\|endoftext\|> token\)"),
    ("encoder.json", lambda d: real_encoder_json(d, hello=0), r"\('!' and 'hello' both have id 0\)"),
    ("encoder.json", lambda d: real_encoder_json(d, Ġ=None), r"\(no token for byte 32 \('Ġ'\)\)"),
    ("encoder.json", lambda d: real_encoder_json(d, 日本=50257), r"token '日本' is not made of bytes_to_unicode"),
    ("encoder.json", b"\xff\xfe{}", "is not UTF-8"),
    ("vocab.bpe", "#version: 0.2\nĠ t\nĠ a b\n", "line 3 is not a merge"),
    ("vocab.bpe", "#version: 0.2\n", "has no merges"),
    ("vocab.bpe", "#version: 0.2\nĠ t\nĠt zzz\n", r"line 3: BPE merge \('Ġt', 'zzz'\) is not two tokens"),
    ("vocab.bpe", "#version: 0.2\nĠ t\nq Ġ\n", r"line 3: BPE merge \('q', 'Ġ'\) is not two tokens .* that make a third"),
    ("vocab.bpe", b"#version: 0.2\n\xc4 t\n", "is not UTF-8"),
])
def test_corrupt_vocabulary_file_names_it_and_the_fix(tmp_path, vocab_dir, file, content, message):
    folder = copy_vocabulary(vocab_dir, tmp_path / "m")
    content = content(vocab_dir) if callable(content) else content
    (folder / file).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(ValueError, match=message) as error:
        encoder.get_encoder("m", str(tmp_path))
    assert str(folder / file) in str(error.value)
    assert str(error.value).endswith("; copy the model's own encoder.json and vocab.bpe there")  # m: none released
    assert_one_line(error)


def test_a_released_models_corrupt_vocabulary_is_downloaded_again(tmp_path, vocab_dir):
    folder = copy_vocabulary(vocab_dir, tmp_path / "124M")
    (folder / "vocab.bpe").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        encoder.get_encoder("124M", str(tmp_path))
    assert str(error.value).endswith(f"; download it again with `python3 download_model.py 124M --models_dir "
                                     f"{tmp_path}`")


def test_mismatched_vocabulary_files_name_the_merge(tmp_path, vocab_dir):
    folder = copy_vocabulary(vocab_dir, tmp_path / "m")
    (folder / "vocab.bpe").write_text("#version: 0.2\nĠt Ġzzz\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"BPE merge \('Ġt', 'Ġzzz'\) is not two tokens of the encoder") as error:
        encoder.get_encoder("m", str(tmp_path))
    assert str(folder) in str(error.value) and "of the same model" in str(error.value)
    assert_one_line(error)


def test_unreadable_vocabulary_says_so(tmp_path, vocab_dir, monkeypatch):
    # Root reads any file whatever its mode: open() is made to answer as it does for other users.
    folder = copy_vocabulary(vocab_dir, tmp_path / "m")
    real_open = open

    def open_denied(path, *args, **kwargs):
        if os.path.dirname(path) == str(folder):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_denied)
    with pytest.raises(PermissionError, match="is unreadable") as error:
        encoder.get_encoder("m", str(tmp_path))
    assert str(folder / "encoder.json") in str(error.value) and "not found" not in str(error.value)
    assert f"chmod -R u+rX {folder}" in str(error.value)
    assert_one_line(error)


def test_a_folder_in_place_of_a_file_is_named(tmp_path, vocab_dir):
    folder = copy_vocabulary(vocab_dir, tmp_path / "m")
    os.remove(folder / "vocab.bpe")
    (folder / "vocab.bpe").mkdir()
    with pytest.raises(IsADirectoryError, match="vocab.bpe cannot be read") as error:
        encoder.get_encoder("m", str(tmp_path))
    assert str(folder / "vocab.bpe") in str(error.value)
    assert_one_line(error)


def copy_vocabulary(vocab_dir, folder):
    folder.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        (folder / name).write_bytes(open(os.path.join(vocab_dir, name), "rb").read())
    return folder


@pytest.mark.parametrize("method", ["decode", "decode_bytes"])
@pytest.mark.parametrize("bad", [50257, -1, 10 ** 20, "31373", None, 1.5, [1]])
def test_decode_rejects_what_is_not_an_id(enc, method, bad):
    with pytest.raises(ValueError, match=r"at position 1 is not a token id: ids are integers from 0 to 50256") as error:
        getattr(enc, method)([31373, bad, 995])
    assert repr(bad) in str(error.value)
    assert_one_line(error)


def test_a_numpy_id_past_the_vocabulary_is_named_as_a_number(enc):
    with pytest.raises(ValueError, match=r"^token 50257 at position 1 is not a token id"):
        enc.decode(np.array([31373, 50257], np.int32))


def test_encode_rejects_lone_surrogates(enc):
    with pytest.raises(ValueError, match=r"'\\ud800' at position 3") as error:
        enc.encode("ab \ud800c")
    assert "clean the text" in str(error.value)
    assert_one_line(error)


def test_encode_rejects_bytes(enc):
    with pytest.raises(TypeError, match="decode bytes first"):
        enc.encode(b"hello")
