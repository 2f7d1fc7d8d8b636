#!/usr/bin/env python3
"""Times `encode` on a deterministic mixed text; prints one JSON line.

    python bench/bench_encoder.py                      # ~4 MB; vocabulary from $GPT2_VOCAB_DIR or models/124M
    python bench/bench_encoder.py --megabytes 16 --vocab_dir models/124M --original
    python bench/bench_encoder.py --text my_corpus.txt # any UTF-8 file instead

Each run encodes the whole text with a fresh Encoder, so with an empty cache; `mb_per_s` is the
median run (`best_mb_per_s` the fastest), in MB of UTF-8 per second, and `cpu_mb_per_s` the
median per second of this process's CPU time, which other busy processes disturb less.
--original times the original algorithm (bench/original_encoder.py) the same way, each of its
runs right after one of ours so that both meet the same load on a shared machine, and adds its
`original_mb_per_s`, `original_cpu_mb_per_s` and the speed-ups, ratios of the medians
(`speedup` of wall time, `cpu_speedup` of CPU time). Before timing, the ids of the text's first
200,000 characters are checked against the original's. --bpe_every_piece times, the same way,
an Encoder that runs BPE on every new piece, even one that is a whole token of GPT-2's vocabulary
(`tokens_are_own_bpe=False`), and adds `bpe_every_piece_mb_per_s` and what skipping wins
(`whole_token_gain`, a ratio of the medians of CPU time).

The text mixes English-like prose (GPT-2's whole-word tokens by frequency, a Zipf law, plus a
tail of rarer derived words and capitalised or upper-case ones), Python-like code with indentation
and trailing spaces, tables of numbers with "\\r\\n" line ends, and lines of CJK, emoji sequences,
accents and non-Latin scripts. It has more rare words than the real English and code tried while
writing this, so it is the harder case. Figures, with date, machine and command: bench/README.md.
"""
import argparse
import itertools
import json
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "src"), os.path.join(ROOT, "bench")]

import encoder  # noqa: E402
import paths  # noqa: E402
import original_encoder  # noqa: E402

SHORT_WORDS = "a i an as at be by do go he if in is it me my no of on or so to up us we".split()
PREFIXES = ["un", "re", "pre", "dis", "over", "non", "anti", "sub", "inter", "mis"]
SUFFIXES = ["s", "es", "ed", "ing", "ly", "er", "ers", "ness", "ment", "ation", "ize", "ful", "less", "able"]
PUNCTUATION = [".", ",", ",", ",", ";", ":", "!", "?", " -", " (", ")", '"', "'s", "n't", "'re", "'ll", " --", "'S"]
CJK = "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可生自会那后能对着事其日本語東京学生"
EMOJI = ["😀", "🎉", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇯🇵", "🇫🇷", "❤️", "🧑🏿\u200d💻", "🚀"]  # ZWJ, skin tones, flags
WORLD = ["Привет", "мир", "Καλημέρα", "naïve", "café", "Zürich", "e\u0301cole", "مرحبا", "שלום", "नमस्ते",
         "Ångström"]


def lexicon(vocabulary, rng, derived):
    """English-like words, most frequent first: GPT-2's whole-word tokens, then `derived` rarer ones."""
    # A lower id is an earlier merge, so a word more frequent in GPT-2's training text.
    words = [t[1:] for t in sorted(vocabulary, key=vocabulary.get)
             if t[0] == "Ġ" and t[1:].isascii() and t[1:].isalpha() and t[1:].islower()
             and (len(t) > 3 or t[1:] in SHORT_WORDS)]
    stems = [w for w in words if len(w) >= 4]
    rare = {rng.choice(PREFIXES) + rng.choice(stems) if rng.random() < 0.3 else rng.choice(stems) + rng.choice(SUFFIXES)
            for _ in range(derived)}
    tail = words[3000:] + sorted(rare.difference(words))
    rng.shuffle(tail)
    return words[:3000] + tail


def prose(rng, words, weights):
    out = []
    for n, word in enumerate(rng.choices(words, cum_weights=weights, k=rng.randint(20, 200))):
        case = rng.random()
        word = word.capitalize() if n == 0 or case < 0.04 else word.upper() if case < 0.045 else word
        out.append(" " + word if n else word)
        if rng.random() < 0.1:
            out.append(rng.choice(PUNCTUATION))
    return "".join(out) + ".\n\n"


def code(rng, words, weights):
    a, b, c, d, e, f = (w.lower() for w in rng.choices(words, cum_weights=weights, k=6))
    lines = [f"def {a}_{b}({c}, {d}={rng.randint(0, 999)}):", f'    """{e.capitalize()} the {f} of {c}."""']
    for depth in range(1, rng.randint(2, 5)):
        pad = "    " * depth
        lines += [f"{pad}if {c}.{e} >= {rng.random():.4f}:  # {f} {b}",
                  f"{pad}    {d} += len({e}) * 0x{rng.getrandbits(16):04x}",
                  f"{pad}    {a}{b.capitalize()} = self.{f}[{d}:]"]
    return "\n".join(lines) + f"\n\treturn {{'{a}': [{c}, {d}]}}   \n\n"


def numbers(rng):
    cells = "|".join(f"{rng.randint(0, 10 ** rng.choice([1, 2, 2, 3, 3, 4, 6, 12])):>14}" for _ in range(6))
    day = f"{rng.randint(1900, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return f"|{cells}|\r\n{day} ${rng.random() * 1e6:,.2f}\r\n"


def world(rng):
    parts = []
    for _ in range(rng.randint(5, 20)):
        kind = rng.random()
        if kind < 0.5:
            parts.append("".join(rng.choices(CJK, k=rng.randint(1, 12))))
        elif kind < 0.7:
            parts.append(rng.choice(EMOJI) * rng.randint(1, 3))
        else:
            parts.append(rng.choice(WORLD))
        parts.append(rng.choice(["", " ", "，", "。", "  "]))
    return "".join(parts) + "\n"


def make_text(vocabulary, megabytes, seed=0):
    """A deterministic mixed text of about `megabytes` MB of UTF-8."""
    rng = random.Random(seed)
    words = lexicon(vocabulary, rng, derived=2000)
    weights = list(itertools.accumulate(1 / (rank + 2.7) for rank in range(len(words))))  # Zipf
    chunks, size = [], 0
    while size < megabytes * 1e6:
        kind = rng.random()
        chunk = (prose(rng, words, weights) if kind < 0.62 else code(rng, words, weights) if kind < 0.9
                 else numbers(rng) if kind < 0.96 else world(rng))
        chunks.append(chunk)
        size += len(chunk.encode("utf-8"))
    return "".join(chunks)


def has_vocab(folder):
    return all(os.path.isfile(os.path.join(folder, name)) for name in ("encoder.json", "vocab.bpe"))


def find_vocab(vocab_dir):
    """--vocab_dir if given, else $GPT2_VOCAB_DIR, else models/124M."""
    if vocab_dir:
        if not has_vocab(vocab_dir):
            sys.exit(f"error: no encoder.json and vocab.bpe in --vocab_dir {vocab_dir}")
        return vocab_dir
    for folder in (os.environ.get("GPT2_VOCAB_DIR"), os.path.join(ROOT, "models", "124M")):
        if folder and has_vocab(folder):
            return folder
    sys.exit("error: no encoder.json and vocab.bpe: pass --vocab_dir, set GPT2_VOCAB_DIR, or run "
             f"`{paths.download_command('124M')}`")


def time_encode(make_encoder, text):
    """(seconds, CPU seconds, ids) of one encode of `text` by a fresh encoder, so with an empty cache."""
    enc = make_encoder()
    start, start_cpu = time.perf_counter(), time.process_time()
    ids = enc.encode(text)
    return time.perf_counter() - start, time.process_time() - start_cpu, ids


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab_dir", help="folder with encoder.json and vocab.bpe "
                                            "(default: $GPT2_VOCAB_DIR, else models/124M)")
    parser.add_argument("--megabytes", type=float, default=4, help="size of the generated text (default 4)")
    parser.add_argument("--text", help="time this UTF-8 file instead of the generated text")
    parser.add_argument("--runs", type=int, default=5, help="timed runs, each with a fresh Encoder (default 5)")
    parser.add_argument("--original", action="store_true", help="also time the original algorithm (slow)")
    parser.add_argument("--bpe_every_piece", action="store_true",
                        help="also time BPE on every new piece, whole tokens too (what skipping them wins)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated text (default 0)")
    args = parser.parse_args()
    folder = find_vocab(args.vocab_dir)

    def fresh_encoder():
        return encoder.get_encoder(os.path.basename(folder), os.path.dirname(folder))

    def fresh_bpe_every_piece():
        enc = fresh_encoder()
        return encoder.Encoder(enc.encoder, list(enc.bpe_ranks), tokens_are_own_bpe=False)

    def fresh_original():
        return original_encoder.get_encoder(os.path.basename(folder), os.path.dirname(folder))

    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    else:
        text = make_text(fresh_encoder().encoder, args.megabytes, args.seed)
    size = len(text.encode("utf-8")) / 1e6
    sample = text[:200_000]
    if fresh_encoder().encode(sample) != fresh_original().encode(sample):
        sys.exit("error: the ids differ from the original algorithm's on the first 200,000 characters")

    runs, original_runs, plain_runs = [], [], []
    for _ in range(args.runs):
        runs.append(time_encode(fresh_encoder, text))
        if args.original:
            original_runs.append(time_encode(fresh_original, text))
        if args.bpe_every_piece:
            plain_runs.append(time_encode(fresh_bpe_every_piece, text))
    seconds = statistics.median(wall for wall, _, _ in runs)
    tokens = len(runs[0][2])
    result = {"mb_per_s": round(size / seconds, 3), "tokens_per_s": round(tokens / seconds),
              "megabytes": round(size, 3), "tokens": tokens, "seconds": round(seconds, 4),
              "best_mb_per_s": round(size / min(wall for wall, _, _ in runs), 3),
              "cpu_mb_per_s": round(size / statistics.median(cpu for _, cpu, _ in runs), 3), "runs": args.runs}
    if args.original:
        assert all(ids == runs[0][2] for _, _, ids in original_runs), "the ids differ from the original algorithm's"
        original_seconds = statistics.median(wall for wall, _, _ in original_runs)
        original_cpu = statistics.median(cpu for _, cpu, _ in original_runs)
        result.update(original_mb_per_s=round(size / original_seconds, 3),
                      original_cpu_mb_per_s=round(size / original_cpu, 3),
                      speedup=round(original_seconds / seconds, 2),
                      cpu_speedup=round(original_cpu / statistics.median(cpu for _, cpu, _ in runs), 2))
    if args.bpe_every_piece:
        assert all(ids == runs[0][2] for _, _, ids in plain_runs), "the ids differ without skipping whole tokens"
        result.update(bpe_every_piece_mb_per_s=round(size / statistics.median(wall for wall, _, _ in plain_runs), 3),
                      whole_token_gain=round(statistics.median(cpu for _, cpu, _ in plain_runs)
                                             / statistics.median(cpu for _, cpu, _ in runs), 2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
