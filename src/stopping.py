"""Stop strings: a sample ends where its text first contains one of them, however the string
falls across tokens, and the stop string is not part of the sample.

Text is matched as UTF-8 bytes, as the tokens stand for them (`encoder.decode_bytes`). While a
sample streams, `StopText` lets out only what can no longer become the start of a stop string:
the longest end of the text that begins one is held back until the next tokens tell.

>>> text = StopText(["\\n\\n"])
>>> text.feed(b"Hello.\\n"), text.feed(b"\\nBye"), text.stopped
(b'Hello.', b'', True)
"""
from checks import bad_argument


def check_stops(stop):
    """stop: None, a string, or a list of strings -> a list of their UTF-8 bytes. ValueError
    naming `stop` for an empty string or what is not a string."""
    stops = [] if stop is None else list(stop) if isinstance(stop, (list, tuple)) else [stop]
    for string in stops:
        if not isinstance(string, str) or not string:
            raise bad_argument("stop", "must be a non-empty string (one for each stop string)", string)
    return [string.encode("utf-8") for string in stops]


def first_stop(text, stops):
    """Where in bytes `text` the stop string that ends first begins (of two ending together, the
    longer), so that the text is cut alike however it comes in pieces; None if none occurs."""
    found = [(i + len(stop), i) for i, stop in ((text.find(stop), stop) for stop in stops) if i >= 0]
    return min(found)[1] if found else None


def held_back(text, stops):
    """How many bytes at the end of `text` begin some stop string (and are not a whole one)."""
    return max([n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])], default=0)


class StopText:
    """One sample's text as its tokens come: `feed` each token's bytes, and print what it
    returns; `stopped` once a stop string has occurred; `finish` when the sample ends without one.
    stop: what `check_stops` takes."""

    def __init__(self, stop):
        self.stops, self.pending, self.stopped = check_stops(stop), b"", False

    def feed(self, data):
        """The bytes that follow the text let out so far and cannot be part of a stop string."""
        if self.stopped:
            return b""
        self.pending += data
        end = first_stop(self.pending, self.stops)
        if end is not None:
            self.stopped = True
        else:
            end = len(self.pending) - held_back(self.pending, self.stops)
        out, self.pending = self.pending[:end], self.pending[end:]
        return out

    def finish(self):
        """The bytes held back, at the end of a sample that no stop string ended."""
        out, self.pending = (b"" if self.stopped else self.pending), b""
        return out


def before_end(tokens, end_token):
    """(the tokens before the first end_token, whether there was one); end_token may be None."""
    tokens = list(tokens)
    return (tokens[:tokens.index(end_token)], True) if end_token in tokens else (tokens, False)


def sample_text(sampler, enc, context, length, *, stop=None, chunk=16, **kwargs):
    """The samples of `sampler.generate` as text: a list of strings, row r's new text, ended
    at its first stop string (which is left out) or its first end_token. Generation stops once
    every row has ended, checked every `chunk` tokens; kwargs go to `sampler.generate`.

    stop: a string or a list of them, as `check_stops` takes.
    """
    texts, ended, out = [StopText(stop) for _ in context], [False] * len(context), [b""] * len(context)
    for tokens in sampler.generate(context, length, chunk=chunk if texts and texts[0].stops else None, **kwargs):
        for r, row in enumerate(tokens):
            if not ended[r]:
                row, end = before_end(row, sampler.end_token)
                out[r] += texts[r].feed(enc.decode_bytes(row))
                ended[r] = end or texts[r].stopped
        if all(ended):
            break
    return [(data + text.finish()).decode("utf-8", "replace") for data, text in zip(out, texts)]
