"""evaluate.py: known answers on a hand-built model, metrics equal to the NumPy reference's on the
tiny model, the file formats and their errors, LAMBADA's download, the command line."""
import errno
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import benchmarks
import checkpoints
import detokenizers
import evaluate
import evaluation
import model
import reference
import saving
import scoring

from helpers import REPO

THE, DOG, CAT = 262, 3290, 3797  # " the", " dog", " cat": one token each
BOUL, TER = 347, 353  # " Boulter" is [347, 2852, 353]


# --- A hand-built model: the same distribution at every position ------------------------------

@pytest.fixture(scope="module")
def certain(models_dir, vocab_dir):
    """A tiny model whose blocks are zero and whose final norm has gain 0 and bias e0: every
    position's logits are wte @ e0, which is 3 for " the", 2 for " dog", 0 for every other token."""
    path = os.path.join(models_dir, "certain")
    checkpoints.write_checkpoint(path, checkpoints.TINY, vocab_dir)
    hparams = model.load_hparams(path)
    values = {name: np.zeros(shape, np.float32) for name, shape in model.checkpoint_shapes(hparams).items()}
    values["model/wte"][THE, 0], values["model/wte"][DOG, 0] = 3, 2
    values["model/ln_f/b"][0] = 1
    saving.write_tensors(os.path.join(path, "model.ckpt"), values)
    return "certain"


def logp(token, n_vocab=50257):
    """The hand-built model's log-probability of a token, by hand."""
    log_z = math.log(math.exp(3) + math.exp(2) + (n_vocab - 2))
    return {THE: 3, DOG: 2}.get(token, 0) - log_z


@pytest.fixture(scope="module")
def loaded(models_dir, certain, tiny_model):
    """name -> (enc, hparams, params), loaded once."""
    import cli
    return {name: cli.load(name, models_dir) for name in (certain, tiny_model)}


@pytest.fixture(scope="module")
def functions(loaded):
    """name -> the compiled continuation function, score.py's logits function and the compiled
    shared-context function (CBT's)."""
    return {name: (evaluation.continuation_function(params, hparams), scoring.logits_function(params, hparams),
                   evaluation.shared_context_function(params, hparams))
            for name, (_, hparams, params) in loaded.items()}


PASSAGES = ["He walked over to the", "They all went to see the dog", "Then she sat on a cat",
            "The actor was Robert Boulter"]


def test_lambada_known_answers(loaded, functions, certain):
    enc, hparams, _ = loaded[certain]
    metrics = evaluation.lambada(functions[certain][0], hparams, enc, PASSAGES, 3)
    nll = [-logp(THE), -logp(DOG), -logp(CAT), -3 * logp(0)]  # " Boulter" is 3 tokens of logit 0
    assert metrics == {"accuracy": 0.25, "perplexity": pytest.approx(math.exp(np.mean(nll)), rel=1e-5),
                       "n_passages": 4, "n_target_tokens": 6}


def test_lambada_stop_word_filter_known_answer(loaded, functions, certain):
    enc, hparams, _ = loaded[certain]
    metrics = evaluation.lambada(functions[certain][0], hparams, enc, PASSAGES, 2, stop_word_filter=True)
    assert metrics["accuracy"] == 0.25  # " the" is banned: " dog" is chosen, and right once
    plain = evaluation.lambada(functions[certain][0], hparams, enc, PASSAGES, 2)
    assert metrics["perplexity"] == plain["perplexity"]  # the filter changes the choice, not the scores


def test_lambada_last_token_known_answer(loaded, functions, certain):
    enc, hparams, _ = loaded[certain]
    metrics = evaluation.lambada(functions[certain][0], hparams, enc, PASSAGES, 4, last_token=True)
    nll = [-logp(THE), -logp(DOG), -logp(CAT), -logp(TER)]
    assert metrics["accuracy"] == 0.25 and metrics["n_target_tokens"] == 4
    assert metrics["perplexity"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)


def test_stop_words_banned_are_the_listed_words_only(loaded, certain):
    enc, hparams, _ = loaded[certain]
    banned = evaluation.banned_tokens(enc, hparams.n_vocab, True)
    assert banned[THE] == banned[enc.encode("The")[0]] == banned[enc.encode(" and")[0]] == -1e9
    assert banned[DOG] == banned[CAT] == banned[13] == 0
    assert not evaluation.banned_tokens(enc, hparams.n_vocab, False).any()


def test_language_modelling_known_answers(loaded, functions, certain, tmp_path):
    enc, hparams, _ = loaded[certain]
    text = " = Title = \n \n The dog 's 1 @,@ 000 @-@ year reign ( and more ) . \n"
    tokens = enc.encode(detokenizers.detokenize("wikitext", text))
    nll = -sum(map(logp, tokens))
    words = 3 + 14 + 3  # the tokens between spaces (3 on the first line, 14 on the third), an end of sentence a line
    got = evaluation.language_modelling(functions[certain][1], hparams, enc, text, benchmarks.count_words(text),
                                        "wikitext2", stride=8)
    assert got == pytest.approx({"nll": nll, "n_tokens": len(tokens), "token_perplexity": math.exp(nll / len(tokens)),
                                 "word_perplexity": math.exp(nll / words)}, rel=1e-5)
    data = "<page><title>the dog</title></page>\n".encode() * 3
    (tmp_path / "enwik8").write_bytes(data)
    read, n_bytes = benchmarks.read_language_modelling(tmp_path / "enwik8", "enwik8")
    got = evaluation.language_modelling(functions[certain][1], hparams, enc, read, n_bytes, "enwik8")
    assert got["bits_per_byte"] == pytest.approx(-sum(map(logp, enc.encode(data.decode()))) / math.log(2) / len(data))
    (tmp_path / "text8").write_text(" anarchism originated as a term of abuse")
    read, n_characters = benchmarks.read_language_modelling(tmp_path / "text8", "text8")
    got = evaluation.language_modelling(functions[certain][1], hparams, enc, read, n_characters, "text8")
    nll = -sum(map(logp, enc.encode(" anarchism originated as a term of abuse")))  # text8 is read as it is
    assert n_characters == 40 and got["bits_per_character"] == pytest.approx(nll / math.log(2) / 40, rel=1e-5)
    (tmp_path / "1bw").write_text("The dog , he said , barked .\nIt 's $ 5 .\n")
    read, n_words = benchmarks.read_language_modelling(tmp_path / "1bw", "1bw")
    got = evaluation.language_modelling(functions[certain][1], hparams, enc, read, n_words, "1bw")
    nll = -sum(map(logp, enc.encode("The dog, he said, barked.\nIt's $5.\n")))
    assert n_words == 8 + 5 + 2  # 8 and 5 tokens, an end of sentence a line
    assert got["word_perplexity"] == pytest.approx(math.exp(nll / n_words), rel=1e-5)


CBT_CONTEXT = "".join(f"{i} `` Line {i} , '' said the boy .\n" for i in range(1, 21))


def cbt_file(path, queries):
    path.write_text("\n".join(CBT_CONTEXT + f"21 {q}\t{a}\t\t{'|'.join(c)}\n" for q, a, c in queries), encoding="utf-8")
    return path


def test_cbt_known_answers(loaded, functions, certain, tmp_path):
    enc, hparams, _ = loaded[certain]
    examples = benchmarks.read_cbt(cbt_file(tmp_path / "cbt.txt", [
        ("`` Look at XXXXX , '' he said .", "the", ["cat", "the", "dog"]),  # " the" is likeliest: right
        ("XXXXX barked .", "dog", ["cat", "dog"]),                           # " dog" beats " cat": right
        ("The XXXXX barked .", "cat", ["cat", "dog"]),                       # wrong
    ]))
    assert examples[0].context[0] == "`` Line 1 , '' said the boy ."
    assert examples[0].candidates == ["cat", "the", "dog"]
    assert evaluation.cbt(functions[certain][2], hparams, enc, examples) == {"accuracy": 2 / 3, "n_questions": 3}


def test_cbt_pairs_share_the_context_and_differ_from_the_candidate_on(loaded, certain):
    enc = loaded[certain][0]
    example = benchmarks.CbtExample(["Tom ran ."], "`` XXXXX , '' said Tom .", "Tom", ["Tom", "Ann"])
    (context, tom), (context2, ann) = evaluation.cbt_pairs(enc, example)
    assert context == context2 and enc.decode(context) == "Tom ran."
    assert enc.decode(tom) == ' "Tom," said Tom.' and enc.decode(ann) == ' "Ann," said Tom.'


# --- The tiny model against the NumPy reference --------------------------------------------------

@pytest.fixture(scope="module")
def ref(models_dir, tiny_model):
    return reference.load(os.path.join(models_dir, tiny_model))


def reference_scores(ref, pairs, n_ctx):
    """(target logprobs, greedy tokens) of each pair by reference.py, the context cut to the window."""
    rh, rw = ref
    out = []
    for context, target in pairs:
        context, target = evaluation.fit_window(context, target, n_ctx)
        z = reference.logits(rh, rw, np.array(context + target))[len(context) - 1:-1]  # predicts the target
        lp = z - z.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        out.append((lp[np.arange(len(target)), target], z.argmax(-1)))
    return out


LONG_PASSAGES = PASSAGES + ["In a hole in the ground there lived a hobbit, not a nasty, dirty, wet hole, filled with "
                            "the ends of worms and an oozy smell, nor yet a dry, bare, sandy hole with nothing in it "
                            "to sit down on or to eat: it was a hobbit-hole, and that means comfort"]  # > 64 tokens


@pytest.mark.parametrize("last_token", [False, True])
def test_lambada_equals_reference(loaded, functions, tiny_model, ref, last_token):
    enc, hparams, _ = loaded[tiny_model]
    got = evaluation.lambada(functions[tiny_model][0], hparams, enc, LONG_PASSAGES, 2, last_token=last_token)
    pairs = evaluation.lambada_pairs(enc, LONG_PASSAGES, last_token)
    want = reference_scores(ref, pairs, hparams.n_ctx)
    correct = [np.array_equal(greedy, target) for (lp, greedy), (_, target) in zip(want, pairs)]
    assert got["accuracy"] == np.mean(correct)
    assert got["perplexity"] == pytest.approx(math.exp(np.mean([-lp.sum() for lp, _ in want])), rel=1e-4)


def test_lambada_rows_are_independent_of_the_batch(loaded, functions, tiny_model):
    enc, hparams, _ = loaded[tiny_model]
    pairs = evaluation.lambada_pairs(enc, LONG_PASSAGES)
    banned = np.zeros([hparams.n_vocab], np.float32)
    alone = [evaluation.score_pairs(functions[tiny_model][0], hparams, [p], 1, banned)[0][0] for p in pairs]
    together = evaluation.score_pairs(functions[tiny_model][0], hparams, pairs, 5, banned)[0]
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_language_modelling_equals_reference(loaded, functions, tiny_model, ref):
    enc, hparams, _ = loaded[tiny_model]
    text = PTB_TEXT * 3  # longer than the window: windows of stride 16
    got = evaluation.language_modelling(functions[tiny_model][1], hparams, enc, text, benchmarks.count_words(text),
                                        "ptb", stride=16)
    tokens = [scoring.END_OF_TEXT] + enc.encode(detokenizers.detokenize("ptb", text))
    rh, rw = ref
    want = np.concatenate([reference.logprobs(rh, rw, np.array(tokens[start:end]))[first - start - 1:]
                           for start, first, end in scoring.windows(len(tokens), hparams.n_ctx, 16)])
    assert got["n_tokens"] == len(tokens) - 1 and len(want) == len(tokens) - 1
    assert got["nll"] == pytest.approx(-want.sum(), rel=1e-5)
    assert got["word_perplexity"] == pytest.approx(math.exp(-want.sum() / (3 * 21 + 3 * 2)), rel=1e-4)


CBT_QUERIES = [("XXXXX barked at the boy .", "dog", ["cat", "dog", "boy", "Boulter"]),
               ("The boy saw the XXXXX .", "King", ["cat", "dog", "boy", "King"])]


def shared_cut(pairs, n_ctx):
    """CBT's pairs with their shared context cut once, to fit beside the longest target."""
    context, _ = evaluation.fit_window(pairs[0][0], max((t for _, t in pairs), key=len), n_ctx)
    return [(context, target) for _, target in pairs]


def test_cbt_equals_reference(loaded, functions, tiny_model, ref, tmp_path):
    enc, hparams, _ = loaded[tiny_model]
    examples = benchmarks.read_cbt(cbt_file(tmp_path / "cbt.txt", CBT_QUERIES))
    got = evaluation.cbt(functions[tiny_model][2], hparams, enc, examples)
    right = []
    for example in examples:
        pairs = evaluation.cbt_pairs(enc, example)
        assert len(pairs[0][0]) + max(len(t) for _, t in pairs) > hparams.n_ctx  # the context is cut
        totals = [lp.sum() for lp, _ in reference_scores(ref, shared_cut(pairs, hparams.n_ctx), hparams.n_ctx)]
        np.testing.assert_allclose(evaluation.shared_context_scores(functions[tiny_model][2], hparams, pairs), totals,
                                   rtol=1e-5)
        right.append(example.candidates[int(np.argmax(totals))] == example.answer)
    assert got == {"accuracy": np.mean(right), "n_questions": 2}


@pytest.mark.parametrize("cut", [False, True])
def test_cbt_shared_context_equals_a_row_per_candidate(loaded, functions, tiny_model, tmp_path, cut):
    """The context run once, its past tiled across the candidates, scores each candidate as
    score_pairs does a row of its own (the per-row way CBT was scored before)."""
    enc, hparams, _ = loaded[tiny_model]
    if cut:  # 20 sentences: longer than the tiny model's window of 64
        example = benchmarks.read_cbt(cbt_file(tmp_path / "cbt.txt", CBT_QUERIES[:1]))[0]
    else:
        example = benchmarks.CbtExample(["Tom ran ."], "`` XXXXX , '' said Tom .", "Tom", ["Tom", "Ann", "Boulter"])
    pairs = evaluation.cbt_pairs(enc, example)
    assert len({len(t) for _, t in pairs}) > 1  # right-padded rows
    assert (len(pairs[0][0]) + max(len(t) for _, t in pairs) > hparams.n_ctx) == cut
    per_row = evaluation.score_pairs(functions[tiny_model][0], hparams, shared_cut(pairs, hparams.n_ctx), 3,
                                     np.zeros([hparams.n_vocab], np.float32))[0]
    got = evaluation.shared_context_scores(functions[tiny_model][2], hparams, pairs)
    np.testing.assert_allclose(got, [lp.sum() for lp in per_row], rtol=1e-5)


def test_cbt_without_targets_scores_zero(loaded, functions, tiny_model):
    enc, hparams, _ = loaded[tiny_model]
    example = benchmarks.CbtExample(["Tom ran ."], "XXXXX ran .", "Tom", ["Tom"])  # one text: no target
    pairs = evaluation.cbt_pairs(enc, example)
    assert pairs[0][1] == []
    assert evaluation.shared_context_scores(functions[tiny_model][2], hparams, pairs) == [0.0]


# --- Files: formats and errors ---------------------------------------------------------------------

PTB_TEXT = (" no it was n't black monday \n"  # 6 words, then an end of sentence
            " but while the new york stock exchange did n't fall apart friday as the dow \n")  # 15


def test_count_words_counts_an_end_of_sentence_per_line():
    assert benchmarks.count_words(PTB_TEXT) == 6 + 15 + 2
    assert benchmarks.count_words("a b\nc") == 5


@pytest.mark.parametrize("content, message", [
    (b"", "is empty: give the benchmark's test file"),
    (b"\n \n", "holds no passage"),
    (b'{"text": "a b"}\nnot json\n', "line 2: not JSON"),
    (b'{"text": "a b"}\n{"txt": "a b"}\n', r"line 2: expected an object whose \"text\" is a passage of several words"),
    (b'{"text": "alone"}\n', "line 1: expected an object"),
    (b"[" * 100000 + b"]" * 100000 + b"\n", "line 1: JSON nested too deeply"),
    (b'{"text": "caf\xe9 au lait"}\n', r"line 1: not UTF-8 text \(invalid continuation byte at byte 13\)"),
])
def test_lambada_file_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "lambada.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as e:
        benchmarks.read_lambada(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_split_encoding_as_lm_evaluation_harness(loaded, certain):
    enc = loaded[certain][0]
    assert evaluation.split_encoding(enc, "hello", " world") == ([31373], [995])
    assert evaluation.split_encoding(enc, "hello ", "world") == ([31373], [995])  # the space moves to the target
    assert evaluation.split_encoding(enc, "", " world") == ([], [995])


def test_lambada_file_reads_passages_and_skips_blank_lines(tmp_path):
    path = tmp_path / "lambada.jsonl"
    path.write_text('{"text": "one two"}\n\n{"text": "three four five"}\n', encoding="utf-8")
    assert benchmarks.read_lambada(path) == ["one two", "three four five"]
    assert evaluation.passage_split("three four five") == ("three four", " five")


@pytest.mark.parametrize("content, message", [
    (CBT_CONTEXT + "21 no blank here\tdog\t\tcat|dog\n", "line 21: expected 'query with XXXXX"),
    (CBT_CONTEXT + "21 The XXXXX ran .\tcow\t\tcat|dog\n", "line 21: the answer 'cow' is not among the candidates"),
    (CBT_CONTEXT.replace("7 ``", "8 ``"), "line 7: expected line number 7 of an example, found '8'"),
    (CBT_CONTEXT[:200] + "\n\n", "example cut short after"),
    ("\n\n", "holds no CBT example"),
    (CBT_CONTEXT + "21 The XXXXX ran .\tdog\t\tdog\n", "line 21: expected different, non-empty candidates"),
    (CBT_CONTEXT + "21 The XXXXX ran .\tdog\t\tdog|cat|dog\n", "line 21: expected different, non-empty"),
    (CBT_CONTEXT + "21 The XXXXX ran .\tdog\t\tdog||cat\n", "line 21: expected different, non-empty"),
])
def test_cbt_file_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "cbt.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as e:
        benchmarks.read_cbt(path)
    assert "\n" not in str(e.value)


def test_text8_refuses_other_text(tmp_path):
    path = tmp_path / "text8"
    path.write_text(" anarchism originated as a term", encoding="utf-8")
    assert benchmarks.read_language_modelling(path, "text8") == (" anarchism originated as a term", 31)
    path.write_text("Anarchism.", encoding="utf-8")
    with pytest.raises(ValueError, match="is not text8: text8 holds lowercase a-z and spaces only"):
        benchmarks.read_language_modelling(path, "text8")


def test_enwik8_counts_bytes_and_reads_a_cut_character(tmp_path):
    path = tmp_path / "enwik8"
    path.write_bytes("café".encode()[:-1])  # the split cut é
    assert benchmarks.read_language_modelling(path, "enwik8") == ("caf\ufffd", 4)


@pytest.mark.parametrize("flags, message", [
    (dict(task="squad"), "--task must be one of lambada, wikitext2, wikitext103, ptb, 1bw, enwik8, text8, cbt-cn, "
                         "cbt-ne. Received: 'squad'"),
    (dict(task=None), "--task must be one of"),
    (dict(task="ptb"), "--data_file is required for --task ptb"),
    (dict(task="ptb", data_file="x", last_token=True), "--last_token and --stop_word_filter are LAMBADA's variants"),
    (dict(task="lambada", batch_size=0), "--batch_size must be a positive integer. Received: 0"),
])
def test_bad_flags_are_refused_before_loading(flags, message):
    with pytest.raises(ValueError, match=message):
        evaluate.evaluate(model_name="absent", models_dir="/nonexistent", **flags)


@pytest.mark.parametrize("task", ["wikitext2", "lambada", "cbt-cn"])
def test_missing_data_file_is_one_line_before_loading(tmp_path, task):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'no'} not found: give the benchmark's "
                                                          "test file")) as e:
        evaluate.evaluate(model_name="absent", models_dir="/nonexistent", task=task, data_file=str(tmp_path / "no"))
    assert "\n" not in str(e.value)


def test_a_cbt_query_longer_than_the_window_names_the_question(loaded, functions, tiny_model):
    enc, hparams, _ = loaded[tiny_model]
    example = benchmarks.CbtExample(["Tom ran ."], "XXXXX ran .", "Tom", ["Tom", "cat " * hparams.n_ctx])
    with pytest.raises(ValueError, match=re.escape("CBT question 1 (query 'XXXXX ran .'): a target of")):
        evaluation.cbt(functions[tiny_model][2], hparams, enc, [example])


# --- LAMBADA's download ------------------------------------------------------------------------

class Store(ThreadingHTTPServer):
    """127.0.0.1: serves `files` {path: bytes} with Content-Length; any other path is a 404.
    `cut`: send the first half of a body without Content-Length, as a mirror whose transfer was cut."""

    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.gets, self.cut = files, [], False

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.gets.append(self.path)
        body = self.server.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        body = b"not found" if body is None else body
        if self.server.cut:  # HTTP/1.0: the body ends where the connection does
            self.end_headers()
            return self.wfile.write(body[:len(body) // 2])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


LAMBADA = b'{"text": "one two"}\n'  # stands for OpenAI's file in these tests


def as_openais(monkeypatch, data):
    """Make `data` OpenAI's lambada_test.jsonl for benchmarks.py."""
    monkeypatch.setattr(benchmarks, "LAMBADA_BYTES", len(data))
    monkeypatch.setattr(benchmarks, "LAMBADA_SHA256", hashlib.sha256(data).hexdigest())


@pytest.fixture
def store(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("GPT2_DOWNLOAD_BACKOFF", "0")
    as_openais(monkeypatch, LAMBADA)
    server = Store({"/gpt-2/data/lambada_test.jsonl": LAMBADA})
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_lambada_is_downloaded_once(store, tmp_path):
    url = store.url + "/gpt-2/data/lambada_test.jsonl"
    path = benchmarks.fetch_lambada(tmp_path / "data", url)
    assert open(path, "rb").read() == b'{"text": "one two"}\n'
    assert os.listdir(tmp_path / "data") == ["lambada_test.jsonl"]
    assert benchmarks.fetch_lambada(tmp_path / "data", url) == path and len(store.gets) == 1


def test_lambada_download_failure_is_one_line_and_leaves_nothing(store, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_DOWNLOAD_BACKOFF", "0")
    with pytest.raises(OSError, match=r"cannot download LAMBADA: GET .*/missing.jsonl: HTTP 404") as e:
        benchmarks.fetch_lambada(tmp_path / "data", store.url + "/missing.jsonl")
    assert "\n" not in str(e.value) and not (tmp_path / "data").exists()  # the folder it made goes too
    # evaluate.py's flag, not download_model.py's, and no "run again", which cannot mend a wrong address
    assert str(e.value).endswith(" (check --lambada_url); give --data_file"), str(e.value)


def test_a_data_dir_that_is_a_file_or_a_full_disk_is_one_line(store, tmp_path, monkeypatch):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(OSError) as e:
        benchmarks.fetch_lambada(tmp_path / "data", store.url + "/gpt-2/data/lambada_test.jsonl")
    assert str(e.value) == (f"--data_dir {tmp_path / 'data'} is not a folder: give a folder to download LAMBADA "
                            "into, or its test set as --data_file")
    download = benchmarks.download_module()

    def no_space(session, url, path, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path + ".part")
    monkeypatch.setattr(benchmarks, "download_module", lambda: types.SimpleNamespace(
        fetch_file=no_space, DownloadError=download.DownloadError, Released=download.Released))
    with pytest.raises(OSError) as e:
        benchmarks.fetch_lambada(tmp_path / "room", store.url + "/gpt-2/data/lambada_test.jsonl")
    path = tmp_path / "room" / "lambada_test.jsonl"
    assert str(e.value) == (f"the disk holding {tmp_path / 'room'} is full: {path} is not downloaded; free space "
                            "there and run again to resume, or give another --data_dir")


def test_lambada_cut_without_a_size_is_refused_and_not_named_as_whole(store, tmp_path):
    store.cut = True  # and no HEAD: nothing but OpenAI's size tells the half from the whole
    url = store.url + "/gpt-2/data/lambada_test.jsonl"
    with pytest.raises(OSError, match=re.escape(
            f"cannot download LAMBADA: GET {url}: the body ended at byte {len(LAMBADA) // 2} of {len(LAMBADA)} "
            "without the server giving a size: the transfer was cut, or the mirror's copy is short; run again")) as e:
        benchmarks.fetch_lambada(tmp_path / "data", url)
    assert "\n" not in str(e.value) and "lambada_test.jsonl" not in os.listdir(tmp_path / "data")


def test_lambada_of_another_size_is_refused(store, tmp_path):
    store.files["/gpt-2/data/lambada_test.jsonl"] = LAMBADA[:-1]  # a mirror's copy, one byte short
    with pytest.raises(OSError, match=f"the server's file has {len(LAMBADA) - 1} bytes, OpenAI's has {len(LAMBADA)}: "
                                      r"it is not the released file \(check --lambada_url\); give --data_file$"):
        benchmarks.fetch_lambada(tmp_path / "data", store.url + "/gpt-2/data/lambada_test.jsonl")
    assert not (tmp_path / "data").exists()  # nothing of it, nor the folder made for it


def test_lambada_of_the_same_size_but_other_bytes_names_the_url(store, tmp_path):
    """A mirror's other file: downloaded anew it fails again, so the address is the first suspect."""
    store.files["/gpt-2/data/lambada_test.jsonl"] = LAMBADA.replace(b"one", b"two")
    with pytest.raises(OSError, match=r"SHA-256 .*; deleted it \(check --lambada_url\); run again, or give "
                                      "--data_file$"):
        benchmarks.fetch_lambada(tmp_path / "data", store.url + "/gpt-2/data/lambada_test.jsonl")


def test_lambada_already_there_must_be_openais(store, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lambada_test.jsonl").write_bytes(LAMBADA[:7])  # cut by an older version
    with pytest.raises(ValueError, match=re.escape(
            "lambada_test.jsonl is not OpenAI's lambada_test.jsonl (7 bytes, SHA-256 ")) as e:
        benchmarks.fetch_lambada(tmp_path / "data", store.url + "/gpt-2/data/lambada_test.jsonl")
    assert str(e.value).endswith(": delete it to download it again, or give it as --data_file to evaluate on "
                                 "it anyway")
    assert store.gets == [] and (tmp_path / "data" / "lambada_test.jsonl").read_bytes() == LAMBADA[:7]


def test_a_lambada_file_given_that_is_not_openais_is_named_in_a_warning(tmp_path, monkeypatch, capsys):
    path = tmp_path / "lambada_cleaned.jsonl"
    path.write_bytes(LAMBADA * 3)
    as_openais(monkeypatch, LAMBADA)
    with pytest.raises(FileNotFoundError):  # after the warning, the absent model
        evaluate.evaluate(model_name="absent", models_dir=str(tmp_path), task="lambada", data_file=str(path))
    sha256 = hashlib.sha256(LAMBADA * 3).hexdigest()
    assert capsys.readouterr().err == (
        f"warning: {path} is not OpenAI's lambada_test.jsonl (3 passages, {3 * len(LAMBADA)} bytes, SHA-256 "
        f"{sha256[:16]}...; OpenAI's: 5,153 passages, {len(LAMBADA)} bytes, SHA-256 "
        f"{hashlib.sha256(LAMBADA).hexdigest()[:16]}...): its figures are not comparable with the paper's or "
        "lm-evaluation-harness's lambada_openai\n")
    path.write_bytes(LAMBADA)
    with pytest.raises(FileNotFoundError):
        evaluate.evaluate(model_name="absent", models_dir=str(tmp_path), task="lambada", data_file=str(path))
    assert capsys.readouterr().err == ""


# --- The command line ------------------------------------------------------------------------------

def run_evaluate(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, os.path.join(REPO, "src", "evaluate.py"), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_json_echoes_the_protocol(models_dir, certain, tmp_path):
    path = tmp_path / "lambada.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in PASSAGES), encoding="utf-8")
    result = run_evaluate("--model_name", certain, "--models_dir", models_dir, "--task", "lambada",
                          "--data_file", str(path), "--json", "--stop_word_filter")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"lambada ({path}, 4 items): accuracy 0.2500, perplexity ")
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["task"] == "lambada" and out["detokenizer"] == "none" and out["n_items"] == 4
    assert "greedy choice among non-stop-words" in out["scoring"] and out["metrics"]["accuracy"] == 0.25


def test_cli_bad_input_is_one_line_exit_1(models_dir, tiny_model, tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_bytes(b"")
    result = run_evaluate("--model_name", tiny_model, "--models_dir", models_dir, "--task", "wikitext2",
                          "--data_file", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == f"error: {path} is empty: give the benchmark's test file\n"


@pytest.mark.parametrize("task, content, message", [
    ("wikitext2", b"", "is empty"),
    ("lambada", b"not json\n", "line 1: not JSON"),
    ("cbt-cn", b"1 a sentence\n", "cut short"),
])
def test_a_bad_data_file_is_refused_before_the_model_loads(tmp_path, task, content, message):
    path = tmp_path / "test.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):  # the model named does not exist: never loaded
        evaluate.evaluate(model_name="absent", models_dir="/nonexistent", task=task, data_file=str(path))


JSON_LINES = '{"text": "He walked over to the dog"}\n{"text": "Then she sat on a cat"}\n'
CBT_LINES = CBT_CONTEXT + "21 The XXXXX ran .\tdog\t\tcat|dog\n"


@pytest.mark.parametrize("task, content, found, expected", [
    *[(task, JSON_LINES, "JSON lines, LAMBADA's format", benchmarks.EXPECTED[task])
      for task in [*benchmarks.LANGUAGE_MODELLING, "cbt-cn", "cbt-ne"]],
    *[(task, CBT_LINES, "numbered lines and queries, CBT's format", benchmarks.EXPECTED[task])
      for task in ["lambada", *benchmarks.LANGUAGE_MODELLING]],
    ("wikitext2", "\n \n" + JSON_LINES, "JSON lines", "WikiText-2's wiki.test.tokens (or wiki.test.raw)"),
])
def test_a_file_of_another_tasks_format_is_refused_naming_the_task_and_its_file(tmp_path, task, content, found,
                                                                                 expected):
    path = tmp_path / "test.file"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as e:  # the model named does not exist: never loaded
        evaluate.evaluate(model_name="absent", models_dir="/nonexistent", task=task, data_file=str(path))
    assert str(e.value).startswith(f"{path} holds {found}")
    assert f", not a test file of --task {task}: give {expected}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("task, content", [
    ("wikitext2", " = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor .\n"),
    ("ptb", " no it was n't black monday \n but while the new york stock exchange did n't fall apart\n"),
    ("1bw", "[ 1 ] The quick brown fox .\n"),  # a bracket that is not JSON
    ("enwik8", "{{Infobox Country}}\n[[Category:Places]]\n"),
    ("wikitext2", "1 is a number , and so is 21 .\n"),  # numbered, but no CBT query
])
def test_text_of_the_tasks_own_kind_is_not_taken_for_another_format(tmp_path, task, content):
    path = tmp_path / "test.txt"
    path.write_text(content, encoding="utf-8")
    text, _ = benchmarks.read_language_modelling(path, task)
    assert text == content
