"""Byte pair encoding utilities: GPT-2's byte-level BPE, token for token the original's.

    >>> enc = get_encoder("124M", "models")
    >>> enc.encode("hello world")
    [31373, 995]
    >>> enc.decode([31373, 995])
    'hello world'

`<|endoftext|>` written in a text is ordinary text, 7 tokens, as in the original; the end-of-text
token itself is `enc.encoder["<|endoftext|>"]` (50256), to be added to the ids by the caller:

    >>> len(enc.encode("<|endoftext|>")), enc.encoder["<|endoftext|>"]
    (7, 50256)

The ids are the original's for every text (the tests hold them to a copy of its algorithm), about
four to five times faster (`python bench/bench_encoder.py --original`):

- The text is cut into pieces with the original's pattern; stretches of ASCII go to an equivalent
  pattern for the standard `re`, up to twice as fast as `regex`.
- Each distinct piece is encoded once and remembered, so a text costs one dictionary look-up per
  piece, all in C (`map` over the pieces; the dictionary's `__missing__` encodes a new one); a
  piece that is a whole token (most words) needs no BPE at all.
- BPE runs on token ids with one table, (left id, right id) -> rank and merged id, and after a
  merge looks up only the two new pairs instead of all of them; long pieces (a run of 10,000
  "a"s) take a heap instead, O(n log n) where the original is quadratic.
"""

import json
import os
import re
import weakref
from collections import deque
from functools import cached_property, lru_cache
from heapq import heapify, heappop, heappush
from itertools import pairwise, repeat

import regex

# The original's pattern, to read; the two below split text into the very same pieces.
# Case-sensitive, as the original: "'S" is not a contraction and is split into "'" and "S".
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The original's alternatives reordered for speed: letters first (no other alternative can start
# where they match), contractions still before the punctuation run that would take their
# apostrophe. The last `\s+` is `\s`: it is only reached for a lone whitespace before a non-space.
_PIECE = regex.compile(r""" ?\p{L}+| ?\p{N}+|'(?:[stmd]|re|ve|ll)| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s""")

# The same on ASCII text, for the faster standard `re`: in ASCII, `regex` reads \p{L} as [A-Za-z],
# \p{N} as [0-9] and \s as [\t\n\v\f\r ] (not \x1c-\x1f, which `re` would count as spaces).
# Ordered by how often each alternative matches (" word" most), which is free where at most one can
# match: the punctuation run is split so that only one that starts with an apostrophe waits for the
# contractions. `++` and `*+` never give back (nothing after them could use it), so `re` keeps no
# backtracking state: about a fifth faster than the plain form (Python 3.11 or newer).
_ASCII_PIECE = re.compile(r""" [A-Za-z]++|[A-Za-z]++|[^\t\n\x0b\x0c\r A-Za-z0-9'][^\t\n\x0b\x0c\r A-Za-z0-9]*+"""
                          r"""| ?[0-9]++|'(?:[stmd]|re|ve|ll)| ?[^\t\n\x0b\x0c\r A-Za-z0-9]++"""
                          r"""|[\t\n\x0b\x0c\r ]+(?![^\t\n\x0b\x0c\r ])|[\t\n\x0b\x0c\r ]""")

# Where a text may be cut without changing its pieces: before the last whitespace of a run that
# is followed by a non-space. The run's other whitespaces end one piece either way, and the last
# one starts the next piece (" word") or is a piece of its own ("\n").
_CUT = re.compile(r"[\t\n\x0b\x0c\r ](?=[!-~])")
_BLOCK_CHARS = 1024  # small, so that a rare emoji or accent sends little text to the slower `regex`
_LONG_PIECE = 48  # bytes; longer pieces take the heap, quadratic merging would cost more
_GROUP_PIECES = 1 << 9  # pieces between two checks of the cache's size; few, so that they are still
                        # in the CPU cache when freed (a third fewer L2 misses than 4096)
_CACHE_PIECES = 1 << 17  # distinct pieces remembered (~20 MB); then a new cache starts


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


class Encoder:
    """GPT-2's tokenizer: `encode` text to token ids, `decode` ids back to text.

    `encoder` maps tokens (strings of `bytes_to_unicode` characters) to ids, `bpe_merges` lists
    the merges (left, right) best first, and `errors` is how `decode` treats ids that end inside
    a UTF-8 character (as `bytes.decode`; 'replace' puts in U+FFFD).
    """

    def __init__(self, encoder, bpe_merges, errors="replace"):
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.errors = errors
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        bpe_merges = list(bpe_merges)
        self.bpe_ranks = dict(zip(bpe_merges, range(len(bpe_merges))))
        self.pat = _PIECE
        self._bytes_by_id = self._token_bytes()
        # Each whole token's ids, made once: a piece that is one (most) then costs no new object.
        self._ids_by_bytes = {data: (i,) for i, data in self._bytes_by_id.items()}
        self._byte_ids = [self._byte_id(b) for b in range(256)]
        self._id_bits = max(encoder.values()).bit_length()
        self._no_merge = len(bpe_merges) << self._id_bits  # above every packed (rank, id)
        self._merges = self._merge_table()
        self._cache = _PieceCache(self)  # piece -> tuple of its ids

    def __getstate__(self):
        # The cache refers to the encoder through a proxy, which pickle would copy as a second
        # encoder: a copy starts with a cache of its own instead.
        return {**self.__dict__, "_cache": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cache = _PieceCache(self)

    def _token_bytes(self):
        """id -> the bytes its token stands for, for each token of `bytes_to_unicode` characters."""
        # Each such character goes to its byte, any other one above 255, where Latin-1 fails.
        table = {ord(c): b for c, b in self.byte_decoder.items()}
        table.update((b, 0xFFFF) for b in range(256) if b not in table)
        data = {}
        for token, i in self.encoder.items():
            try:
                data[i] = token.translate(table).encode("latin-1")
            except UnicodeEncodeError:  # the token stands for no bytes, so no text makes it
                pass
        return data

    def _byte_id(self, byte):
        token = self.byte_encoder[byte]
        if token not in self.encoder:
            raise ValueError(f"the encoder has no token for byte {byte} ({token!r}); "
                             f"a GPT-2 vocabulary has one for each of the 256 bytes")
        return self.encoder[token]

    def _merge_table(self):
        """(left id, right id) -> rank << _id_bits | merged id, for each merge."""
        ids, bits = self.encoder, self._id_bits
        try:
            return {(ids[left], ids[right]): rank << bits | ids[left + right]
                    for (left, right), rank in self.bpe_ranks.items()}
        except (KeyError, TypeError, ValueError):  # not two tokens that make a third
            bad = next(pair for pair in self.bpe_ranks if not (
                isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
                and pair[0] in ids and pair[1] in ids and pair[0] + pair[1] in ids))
            raise ValueError(f"BPE merge {bad!r} is not two tokens of the encoder that make a third; "
                             f"use the encoder.json and vocab.bpe of the same model") from None

    @cached_property
    def _in_order(self):
        """Whether each merge uses only tokens that better-ranked merges make, as BPE training does
        (GPT-2's do). Then the pairs a merge makes rank after it, and a heap gives the order."""
        bits, merges = self._id_bits, self._merges  # on ids, not strings: a third quicker
        made = {packed & ((1 << bits) - 1): packed >> bits  # id -> the worst rank making it
                for packed in sorted(merges.values())}
        return all(made.get(left, -1) < packed >> bits > made.get(right, -1)
                   for (left, right), packed in merges.items())

    def bpe(self, token):
        """The original's `bpe`: the BPE tokens of `token` (a string of `bytes_to_unicode`
        characters), joined by spaces.

        >>> enc.bpe("Ġtokenizer")
        'Ġtoken izer'
        """
        ids = self._bpe_ids(bytes(map(self.byte_decoder.__getitem__, token)))
        return " ".join(map(self.decoder.__getitem__, ids))

    def _bpe_ids(self, data):
        """The ids of GPT-2's BPE of `data`, the UTF-8 bytes of one piece.

        Merges are the original's, in its order: the best-ranked pair first, and each of its
        occurrences, left to right, before any other pair.
        """
        if len(data) > _LONG_PIECE and self._in_order:
            return self._bpe_ids_long(data)
        get, none, id_mask = self._merges.get, self._no_merge, (1 << self._id_bits) - 1
        # -1, never an id, at both ends, so that each pair has a neighbour on either side.
        ids = [-1, *map(self._byte_ids.__getitem__, data), -1]
        ranks = list(map(get, pairwise(ids), repeat(none)))  # ranks[i]: pair (ids[i], ids[i + 1])
        best = min(ranks)
        while best != none:
            i = ranks.index(best)
            ids[i] = merged = best & id_mask
            del ids[i + 1], ranks[i]  # cheaper than slice assignments, which build tuples
            ranks[i - 1] = get((ids[i - 1], merged), none)
            ranks[i] = get((merged, ids[i + 1]), none)
            # The best pair left, unless one just made ranks before `best` (only in a vocabulary out
            # of order) while `best` has occurrences left: the original merges those first.
            lowest = min(ranks)
            if lowest >= best or best not in ranks:
                best = lowest
        return tuple(ids[1:-1])

    def _bpe_ids_long(self, data):
        """`_bpe_ids` in O(n log n), for long pieces: (rank, position) of each pair on a heap.

        Each merge's new pairs rank after it (`_in_order`), so popping the heap merges in the
        original's order; an entry whose symbols have changed since it was pushed is skipped.
        """
        get, id_mask = self._merges.get, (1 << self._id_bits) - 1
        ids = [*map(self._byte_ids.__getitem__, data), -1]  # -1 ends the piece; -2 marks merged ones
        after = list(range(1, len(ids) + 1))  # after[p]: the symbol right of p
        before = list(range(-1, len(ids)))  # before[p]: the symbol left of p, -1 for none
        heap = [(rank, p) for p, rank in enumerate(map(get, pairwise(ids))) if rank is not None]
        heapify(heap)
        while heap:
            rank, p = heappop(heap)
            q = after[p]
            if get((ids[p], ids[q])) != rank:
                continue
            merged = ids[p] = rank & id_mask
            ids[q] = -2
            r = after[p] = after[q]
            before[r] = p
            if (rank := get((merged, ids[r]))) is not None:
                heappush(heap, (rank, p))
            o = before[p]
            if o >= 0 and (rank := get((ids[o], merged))) is not None:
                heappush(heap, (rank, o))
        return tuple(filter((-1).__lt__, ids))

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
        tokens = []
        try:
            for pieces in _split(text):
                cache = self._cache
                if len(cache) + len(pieces) > _CACHE_PIECES:
                    # A new one, not clear(): another thread may be reading the old one.
                    self._cache = cache = _PieceCache(self)
                # tokens.extend(the ids of each piece); deque(..., 0) runs the map, keeping nothing.
                deque(map(tokens.extend, map(cache.__getitem__, pieces)), 0)
        except UnicodeEncodeError:  # only a lone surrogate cannot be UTF-8
            raise ValueError(_unencodable(text)) from None
        return tokens

    def decode(self, tokens):
        """Return the text of the token ids `tokens`; see `errors` for ids that split a character.

        >>> enc.decode([31373, 995])
        'hello world'
        """
        tokens = tokens if isinstance(tokens, (list, tuple)) else list(tokens)
        try:
            data = b"".join(map(self._bytes_by_id.__getitem__, tokens))
        except (KeyError, TypeError):  # an id the vocabulary lacks, or not a number at all
            raise ValueError(self._bad_token(tokens)) from None
        return data.decode("utf-8", errors=self.errors)

    def _bad_token(self, tokens):
        for position, token in enumerate(tokens):
            try:
                self._bytes_by_id[token]
            except (KeyError, TypeError):
                return (f"token {token!r} at position {position} is not a token id: ids are integers "
                        f"from {min(self.decoder)} to {max(self.decoder)}")
        return "not token ids"


class _PieceCache(dict):
    """piece -> the tuple of its ids, for one `Encoder`; a missing piece is encoded and remembered.

    Looking pieces up with `map(cache.__getitem__, pieces)` stays in C for all the pieces already
    known, and needs no pass over the pieces to find the new ones first.
    """

    __slots__ = ("_ids_by_bytes", "_encoder")

    def __init__(self, encoder):
        super().__init__()
        self._ids_by_bytes = encoder._ids_by_bytes
        # A proxy: a reference would make a cycle, and keep both until the GC's next full pass.
        self._encoder = weakref.proxy(encoder)

    def __missing__(self, piece):
        data = piece.encode("utf-8")
        # GPT-2's BPE turns each whole token back into itself (the tests check all 50257).
        ids = self._ids_by_bytes.get(data)
        if ids is None:
            ids = self._encoder._bpe_ids(data)
        self[piece] = ids
        return ids


def _split(text):
    """Yield the original's pieces of `text`, in lists of about `_GROUP_PIECES`."""
    pieces, start, end = [], 0, len(text)
    while start < end:
        cut = _CUT.search(text, start + _BLOCK_CHARS)
        stop = cut.start() if cut else end
        block = text[start:stop]  # a copy of the narrowest kind, quicker to match and cut than `text`
        pieces += (_ASCII_PIECE if block.isascii() else _PIECE).findall(block)
        if len(pieces) >= _GROUP_PIECES or stop == end:
            yield pieces
            pieces = []
        start = stop


def _unencodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return (f"cannot encode {text[error.start]!r} at position {error.start}: a lone surrogate is "
                f"not text; clean the text first, e.g. text.encode('utf-8', 'replace').decode('utf-8')")
    return "cannot encode the text as UTF-8"


def get_encoder(model_name, models_dir):
    """Return the `Encoder` of the model in `models_dir/model_name` (its encoder.json, vocab.bpe).

    >>> enc = get_encoder("124M", "models")
    """
    folder = os.path.join(models_dir, model_name)
    encoder = _read_encoder_json(os.path.join(folder, "encoder.json"), model_name, models_dir)
    merges = _read_vocab_bpe(os.path.join(folder, "vocab.bpe"), model_name, models_dir)
    try:
        return Encoder(encoder=encoder, bpe_merges=merges)
    except ValueError as error:
        raise ValueError(f"{folder}: {error}") from None


def _download(model_name, models_dir):
    command = f"python3 download_model.py {model_name}"
    if os.path.normpath(models_dir) != "models":
        command += f" --models_dir {models_dir}"
    return f"`{command}`"


def _download_hint(model_name, models_dir):
    # download_model.py keeps a file that is already there, so a bad one has to go first.
    return f"delete it and download it again with {_download(model_name, models_dir)}"


def _read_text(path, model_name, models_dir):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found; download it with {_download(model_name, models_dir)}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                         f"{_download_hint(model_name, models_dir)}") from None


def _read_encoder_json(path, model_name, models_dir):
    text = _read_text(path, model_name, models_dir)
    try:
        encoder = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno} column "
                         f"{error.colno}); {_download_hint(model_name, models_dir)}") from None
    if not (isinstance(encoder, dict) and encoder
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in encoder.values())):
        raise ValueError(f"{path} is not a GPT-2 encoder.json (an object of token: id, an integer >= 0); "
                         f"{_download_hint(model_name, models_dir)}")
    return encoder


def _read_vocab_bpe(path, model_name, models_dir):
    lines = _read_text(path, model_name, models_dir).split("\n")
    first = 1 if lines[0].startswith("#") else 0  # the original skips its "#version: 0.2" line
    merges = []
    for number, line in enumerate(lines[first:], start=first + 1):
        merge = tuple(line.split())
        if len(merge) == 2:
            merges.append(merge)
        elif merge:
            raise ValueError(f"{path} line {number} is not a merge (two tokens and a space): {line[:40]!r}; "
                             f"{_download_hint(model_name, models_dir)}")
    if not merges:
        raise ValueError(f"{path} has no merges; {_download_hint(model_name, models_dir)}")
    return merges
