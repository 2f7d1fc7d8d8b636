"""Byte pair encoding utilities: GPT-2's byte-level BPE, token for token the original's.

    >>> enc = get_encoder("124M", "models")
    >>> enc.encode("hello world")
    [31373, 995]
    >>> enc.decode([31373, 995])
    'hello world'

How a text becomes ids, as in the original:

1. `PATTERN` cuts the text into pieces: a word or a number with the space before it, a run of
   punctuation, a run of whitespace, a contraction ("'s", "'ll").
2. A piece's UTF-8 bytes become printable characters (`bytes_to_unicode`), one symbol each.
3. BPE merges the adjacent pair of symbols that vocab.bpe ranks best, each occurrence of it,
   again and again until no adjacent pair is in vocab.bpe.
4. Each symbol left is a token of encoder.json, which gives its id.

Three things differ, none in the ids: each distinct piece's ids are remembered in `cache`, so a
text costs BPE once per new piece; a piece that is a whole token of GPT-2's vocabulary is that
token, as BPE would make it (`Encoder`'s `tokens_are_own_bpe`); and a long piece merges with a
heap, in O(n log n) where the original's rounds are quadratic on a long varied piece (100 kB of
random letters or digits).

`<|endoftext|>` written in a text is ordinary text, 7 tokens, as in the original; the end-of-text
token itself is `enc.encoder["<|endoftext|>"]` (50256), to be added to the ids by the caller:

    >>> len(enc.encode("<|endoftext|>")), enc.encoder["<|endoftext|>"]
    (7, 50256)
"""

import hashlib
import json
import numbers
import os
from functools import lru_cache
from heapq import heapify, heappop, heappush
from math import inf

import regex

from paths import RELEASED, download_command, how_to_get

# The original's pattern. Case-sensitive, as there: "'S" is not a contraction but "'" and "S".
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# SHA-256 of GPT-2's own encoder.json and vocab.bpe (those tiktoken checks its downloads against).
# BPE makes each of their tokens from its own bytes: tests/test_encoder.py checks all of them.
GPT2_SHA256 = {"encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
               "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}

_LONG_PIECE = 64  # symbols; a longer piece merges with the heap, where quadratic merging costs more
_CACHE_PIECES = 1 << 17  # distinct pieces remembered; then the cache starts again, so memory stays bounded


@lru_cache()
def bytes_to_unicode():
    """Return GPT-2's map from each byte (0-255) to the printable character that stands for it.

    BPE works on these characters, so that the vocabulary files hold no whitespace or control
    characters: printable Latin-1 bytes stand for themselves, the other 68 for chr(256 + n).

    >>> bytes_to_unicode()[ord(" ")], bytes_to_unicode()[ord("a")]
    ('Ġ', 'a')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def get_pairs(word):
    """Return the set of adjacent symbol pairs in `word`, a sequence of symbols (strings).

    >>> sorted(get_pairs(("h", "e", "l", "l", "o")))
    [('e', 'l'), ('h', 'e'), ('l', 'l'), ('l', 'o')]
    """
    return set(zip(word, word[1:]))


def merge_pairs(symbols, ranks):
    """The original's BPE: merges `symbols` (a list of strings, in place) until no adjacent pair
    of them has a rank in `ranks`, (left, right) -> rank, best first, and returns it.

    Each round merges every occurrence of the best-ranked pair, left to right. A merge changes
    only the ranks of the two pairs beside it.
    """
    pair_ranks = [ranks.get(pair, inf) for pair in zip(symbols, symbols[1:])]  # [i]: symbols i, i + 1
    while len(symbols) > 1:
        best = min(pair_ranks)
        if best == inf:
            break
        while best in pair_ranks:
            i = pair_ranks.index(best)
            symbols[i] += symbols.pop(i + 1)
            del pair_ranks[i]
            if i > 0:
                pair_ranks[i - 1] = ranks.get((symbols[i - 1], symbols[i]), inf)
            if i < len(pair_ranks):
                pair_ranks[i] = ranks.get((symbols[i], symbols[i + 1]), inf)
    return symbols


def merge_pairs_long(symbols, ranks):
    """`merge_pairs` in O(n log n), for long pieces: where the pairs of each rank are, and a heap
    of those ranks.

    The symbols stay at their positions, linked to their neighbours by `before` and `after`; one
    merged into its left neighbour becomes None, as are the two ends, so that no pair with them
    has a rank. A round takes the best rank's positions left to right, skipping those whose pair
    has changed since; the pairs its merges make wait for later rounds, as in the original.
    """
    symbols = [None, *symbols, None]
    after = list(range(1, len(symbols) + 1))
    before = list(range(-1, len(symbols) - 1))
    where = {}  # rank -> left ends of the pairs that had that rank when they were made
    for p, pair in enumerate(zip(symbols, symbols[1:])):
        if pair in ranks:
            where.setdefault(ranks[pair], []).append(p)
    heap = list(where)
    heapify(heap)
    while heap:
        rank, made = heappop(heap), []
        for p in sorted(where.pop(rank)):
            q = after[p]
            if ranks.get((symbols[p], symbols[q])) != rank:
                continue
            symbols[p], symbols[q] = symbols[p] + symbols[q], None
            after[p] = after[q]
            before[after[q]] = p
            made += [before[p], p]  # the left ends of the two new pairs
        for p in made:
            pair = symbols[p], symbols[after[p]]
            if pair in ranks:
                if ranks[pair] not in where:
                    heappush(heap, ranks[pair])
                where.setdefault(ranks[pair], []).append(p)
    return [symbol for symbol in symbols if symbol is not None]


class Encoder:
    """GPT-2's tokenizer: `encode` text to token ids, `decode` ids back to text.

    `encoder` maps tokens (strings of `bytes_to_unicode` characters) to ids, `bpe_merges` lists
    the merges (left, right) best first, and `errors` is how `decode` treats ids that end inside
    a UTF-8 character (as `bytes.decode`; 'replace' puts in U+FFFD). `get_encoder` checks a
    model's files; the arguments here are taken as they are, as in the original.

    `tokens_are_own_bpe` says that BPE makes each token from its own bytes (as for GPT-2's
    vocabulary, which `get_encoder` recognises): then a piece that is a whole token skips BPE.
    BPE training gives vocabularies that property; hand-made ones may lack it.
    """

    def __init__(self, encoder, bpe_merges, errors="replace", *, tokens_are_own_bpe=False):
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.errors = errors
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(bpe_merges)}
        self.tokens_are_own_bpe = tokens_are_own_bpe
        self.cache = {}  # piece of text -> the tuple of its ids (the original's held bpe()'s strings)
        self.pat = regex.compile(PATTERN)

    def bpe(self, token):
        """The original's `bpe`: the BPE tokens of `token` (a string of `bytes_to_unicode`
        characters), joined by spaces.

        >>> enc.bpe("Ġtokenizer")
        'Ġtoken izer'
        """
        return " ".join(self._merge(list(token)))

    def _merge(self, symbols):
        return (merge_pairs_long if len(symbols) > _LONG_PIECE else merge_pairs)(symbols, self.bpe_ranks)

    def encode(self, text):
        """Return the token ids of `text`, the original's for any text.

        >>> enc.encode("hello world")
        [31373, 995]
        >>> enc.encode(" <|endoftext|>") == [1279, 91, 437, 1659, 5239, 91, 29]
        True

        The end-of-text token, `enc.encoder["<|endoftext|>"]` (50256), is never made from text:
        append it to the ids yourself.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}; decode bytes first, "
                            f"e.g. data.decode('utf-8')")
        ids = []
        try:
            for piece in self.pat.findall(text):
                piece_ids = self.cache.get(piece)
                if piece_ids is None:
                    piece_ids = self._encode_piece(piece)
                ids.extend(piece_ids)
        except UnicodeEncodeError:  # only a lone surrogate cannot be UTF-8
            position = next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff")
            raise ValueError(f"cannot encode {text[position]!r} at position {position}: a lone surrogate is "
                             f"not text; clean the text first, e.g. "
                             f"text.encode('utf-8', 'replace').decode('utf-8')") from None
        return ids

    def _encode_piece(self, piece):
        """The ids of one piece of the pattern's, remembered in `cache`."""
        if len(self.cache) >= _CACHE_PIECES:  # text of endless new pieces (numbers) would fill memory
            self.cache.clear()
        symbols = [self.byte_encoder[b] for b in piece.encode("utf-8")]
        token = "".join(symbols)
        if self.tokens_are_own_bpe and token in self.encoder:  # faster cold: bench/bench_encoder.py --bpe_every_piece
            ids = (self.encoder[token],)
        else:
            ids = tuple([self.encoder[t] for t in self._merge(symbols)])
        self.cache[piece] = ids
        return ids

    def decode(self, tokens):
        """Return the text of the token ids `tokens`; see `errors` for ids that split a character.

        >>> enc.decode([31373, 995])
        'hello world'
        """
        return self.decode_bytes(tokens).decode("utf-8", errors=self.errors)

    def decode_bytes(self, tokens):
        """Return the UTF-8 bytes that the token ids `tokens` stand for.

        A character may span tokens: a stream of samples decodes these bytes with an incremental
        decoder (`codecs.getincrementaldecoder("utf-8")`) rather than each token's text alone.

        >>> enc.decode_bytes([47249]), enc.decode_bytes([47249, 222]).decode("utf-8")  # 😀: 3 bytes, then 1
        (b'\\xf0\\x9f\\x98', '😀')
        """
        tokens = list(tokens)
        try:
            text = "".join([self.decoder[token] for token in tokens])
        except (KeyError, TypeError):  # an id the vocabulary lacks, or not a number at all
            raise ValueError(self._bad_token(tokens)) from None
        return bytes([self.byte_decoder[c] for c in text])

    def _bad_token(self, tokens):
        position, token = next((p, t) for p, t in enumerate(tokens) if not _is_key(self.decoder, t))
        token = int(token) if isinstance(token, numbers.Integral) else token  # 7, not np.int32(7)
        return (f"token {token!r} at position {position} is not a token id: ids are integers "
                f"from {min(self.decoder)} to {max(self.decoder)}")


def _is_key(mapping, key):
    try:
        return key in mapping
    except TypeError:  # unhashable
        return False


def get_encoder(model_name, models_dir):
    """Return the `Encoder` of the model in `models_dir/model_name` (its encoder.json, vocab.bpe).

    A file that is missing, unreadable or not a GPT-2 vocabulary's raises FileNotFoundError,
    PermissionError or ValueError, one line naming the file and the fix.

    >>> enc = get_encoder("124M", "models")
    """
    folder = os.path.join(models_dir, model_name)
    fix = (f"download it again with `{download_command(model_name, models_dir)}`" if str(model_name) in RELEASED
           else "copy the model's own encoder.json and vocab.bpe there")  # download_model.py fetches none other
    encoder_json, vocab_bpe = os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")
    data = {path: _read(path, how_to_get(model_name, models_dir), fix) for path in (encoder_json, vocab_bpe)}
    encoder = _parse_encoder_json(encoder_json, _text(encoder_json, data[encoder_json], fix), fix)
    merges = _parse_vocab_bpe(vocab_bpe, _text(vocab_bpe, data[vocab_bpe], fix), encoder, fix)
    gpt2 = all(hashlib.sha256(data[path]).hexdigest() == GPT2_SHA256[os.path.basename(path)] for path in data)
    return Encoder(encoder=encoder, bpe_merges=merges, tokens_are_own_bpe=gpt2)


def check_fits(enc, n_vocab, folder):
    """ValueError unless each of `enc`'s ids has a row among the model's n_vocab token
    embeddings: encoder.json and hparams.json of two models would fail at the first id past
    them, deep inside TensorFlow."""
    largest = max(enc.decoder)
    if largest >= n_vocab:
        raise ValueError(f"{os.path.join(folder, 'encoder.json')} has token ids up to {largest}, but the model has "
                         f"{n_vocab} token embeddings (n_vocab in {os.path.join(folder, 'hparams.json')}): the "
                         "vocabulary is another model's; copy the model's own encoder.json and vocab.bpe there")


def read_merges(path, encoder, fix):
    """The BPE merges (left, right), best first, of the vocab.bpe (or Hugging Face's merges.txt)
    at `path`, each checked to make a token of `encoder` (token -> id) as `get_encoder` checks
    them: a ValueError naming the file, the line and what is wrong, then `fix`, how to mend it."""
    with open(path, "rb") as f:
        return _parse_vocab_bpe(path, _text(path, f.read(), fix), encoder, fix)


def _bad_file(path, problem, fix):
    return ValueError(f"{path} {problem}; {fix}")


def _read(path, how, fix):
    """The bytes of `path`; a missing file says `how` to get the model, an unreadable one `fix`."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found; {how}") from None
    except PermissionError:
        raise PermissionError(f"{path} is unreadable (permission denied); let this user read it and its "
                              f"folder, e.g. `chmod -R u+rX {os.path.dirname(path)}`") from None
    except OSError as error:  # a folder where the file should be, an I/O error
        raise type(error)(f"{path} cannot be read ({error.strerror}); {fix}") from None


def _text(path, data, fix):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _bad_file(path, f"is not UTF-8 text ({error.reason} at byte {error.start})", fix) from None


def _parse_encoder_json(path, text, fix):
    """encoder.json's token -> id, checked to be a GPT-2 vocabulary's."""
    try:
        encoder = json.loads(text)
    except json.JSONDecodeError as error:
        raise _bad_file(path, f"is not valid JSON ({error.msg} at line {error.lineno} column "
                              f"{error.colno})", fix) from None
    except (ValueError, RecursionError):  # a number of thousands of digits; arrays deep in arrays
        raise _bad_file(path, "is not a GPT-2 encoder.json (a number too long or nesting too deep to read)",
                        fix) from None
    if not (isinstance(encoder, dict)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in encoder.values())):
        raise _bad_file(path, "is not a GPT-2 encoder.json (an object of token: id, an integer >= 0)", fix)
    problem = _vocabulary_problem(encoder)
    if problem:
        raise _bad_file(path, f"is not a GPT-2 encoder.json ({problem})", fix)
    return encoder


def _vocabulary_problem(encoder):
    """What makes `encoder` (token -> id) unfit for an Encoder, or None."""
    if len(set(encoder.values())) < len(encoder):
        first_token = {}
        token, i = next((t, i) for t, i in encoder.items() if first_token.setdefault(i, t) != t)
        return f"{first_token[i]!r} and {token!r} both have id {i}"
    if "<|endoftext|>" not in encoder:
        return "no <|endoftext|> token"
    missing = [b for b, c in bytes_to_unicode().items() if c not in encoder]
    if missing:
        return f"no token for byte {missing[0]} ({bytes_to_unicode()[missing[0]]!r})"
    byte_chars = set(bytes_to_unicode().values())
    if not byte_chars.issuperset("".join(encoder)):
        token = next(t for t in encoder if not byte_chars.issuperset(t))
        return f"token {token[:40]!r} is not made of bytes_to_unicode() characters"
    return None


def _parse_vocab_bpe(path, text, encoder, fix):
    """vocab.bpe's merges (left, right), best first, each checked to make a token of `encoder`."""
    lines = text.split("\n")
    first = 1 if lines[0].startswith("#") else 0  # the original skips its "#version: 0.2" line
    merges = []
    for number, line in enumerate(lines[first:], start=first + 1):
        merge = tuple(line.split())
        if not merge:
            continue
        if len(merge) != 2:
            raise _bad_file(path, f"line {number} is not a merge (two tokens and a space): {line[:40]!r}", fix)
        left, right = merge
        if not (left in encoder and right in encoder and left + right in encoder):
            raise _bad_file(path, f"line {number}: BPE merge {merge!r} is not two tokens of the encoder that make a "
                                  f"third (use the encoder.json and vocab.bpe of the same model)", fix)
        merges.append(merge)
    if not merges:
        raise _bad_file(path, "has no merges", fix)
    return merges
