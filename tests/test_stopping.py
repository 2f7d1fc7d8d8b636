"""stopping.py: stop strings found however they fall across tokens, and never printed."""
import pytest

import stopping


def feed_all(stop, pieces):
    text = stopping.StopText(stop)
    out = [text.feed(piece) for piece in pieces]
    return out, text.stopped, text.finish()


def test_a_stop_string_across_pieces_is_held_back_then_dropped():
    assert feed_all("END", [b"ab", b"cE", b"N", b"Dxyz"]) == ([b"ab", b"c", b"", b""], True, b"")


def test_what_turns_out_not_to_be_a_stop_string_is_let_out():
    assert feed_all("END", [b"aE", b"Nx", b"E"]) == ([b"a", b"ENx", b""], False, b"E")


def test_the_first_of_several_stop_strings_ends_the_text():
    assert feed_all(["later", "B"], [b"xxlat", b"eBr"]) == ([b"xx", b"late"], True, b"")
    assert feed_all(["aB", "B"], [b"x", b"aBc"]) == ([b"x", b""], True, b"")
    # The one that ends first: the text is cut alike however it comes in pieces.
    assert feed_all(["abcd", "bc"], [b"xab", b"cd"]) == ([b"x", b"a"], True, b"")
    assert feed_all(["abcd", "bc"], [b"xabcd"]) == ([b"xa"], True, b"")
    assert feed_all(["abc", "bc"], [b"xabc"]) == ([b"x"], True, b"")


def test_multibyte_stop_strings_match_their_utf8_bytes():
    smile = "\U0001F600".encode()
    assert feed_all("\U0001F600!", [b"hi", smile[:3], smile[3:] + b"!", b"more"]) == ([b"hi", b"", b"", b""], True, b"")


def test_no_stop_strings_let_everything_out():
    assert feed_all(None, [b"a", b"b"]) == ([b"a", b"b"], False, b"")
    assert feed_all([], [b"a"]) == ([b"a"], False, b"")


@pytest.mark.parametrize("stop", ["", ["a", ""], [None], 5])
def test_bad_stop_strings_are_refused_naming_stop(stop):
    with pytest.raises(ValueError, match="^stop must be a non-empty string") as e:
        stopping.check_stops(stop)
    assert e.value.argument == "stop"


def test_before_end_cuts_at_the_first_end_token():
    assert stopping.before_end([5, 6, 50256, 7, 50256], 50256) == ([5, 6], True)
    assert stopping.before_end([5, 6], 50256) == ([5, 6], False)
    assert stopping.before_end([5, 6], None) == ([5, 6], False)


class Counting:
    """A Sampler that counts the chunks it yields."""

    def __init__(self, sampler):
        self.sampler, self.end_token, self.chunks = sampler, sampler.end_token, 0

    def generate(self, *args, **kwargs):
        for tokens in self.sampler.generate(*args, **kwargs):
            self.chunks += 1
            yield tokens


def test_sample_text_ends_ragged_rows_at_their_stop_strings_and_stops_early(tiny, models_dir, tiny_model):
    import encoder
    import fast
    hparams, params = tiny
    enc = encoder.get_encoder(tiny_model, models_dir)
    sampler = fast.Sampler(params, hparams)
    prompts = [enc.encode("Hello"), enc.encode("A longer prompt than that")]
    free = [enc.decode(row[len(p):]) for row, p in zip(sampler.sample(prompts, 60, seed=3), prompts)]
    stops = [free[0][3:6], free[1][5:8]]  # early in each row
    counting = Counting(sampler)
    texts = stopping.sample_text(counting, enc, prompts, 60, stop=stops, chunk=8, seed=3)
    assert counting.chunks < 60 // 8
    for text, full in zip(texts, free):
        ends = [full.index(stop) for stop in stops if stop in full]
        assert text == full[:min(ends)]
    assert stopping.sample_text(sampler, enc, prompts, 60, seed=3) == free  # no stop strings
