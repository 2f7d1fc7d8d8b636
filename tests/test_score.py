"""score.py: windows over long texts, log-probabilities equal to the reference's, the CLI."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import checkpoints
import model
import reference
import score
import scoring

from helpers import REPO, RecordingBar


def test_windows_known_answer():
    assert list(scoring.windows(10, 4, 2)) == [(0, 1, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    assert list(scoring.windows(3, 4, 2)) == [(0, 1, 3)]
    assert list(scoring.windows(7, 4, 3)) == [(0, 1, 4), (3, 4, 7)]


@pytest.mark.parametrize("n, n_ctx, stride", [(2, 8, 4), (100, 16, 8), (101, 16, 1), (57, 16, 15)])
def test_windows_score_each_token_once_with_enough_context(n, n_ctx, stride):
    scored = []
    for start, first, end in scoring.windows(n, n_ctx, stride):
        assert 0 <= start < first < end <= n and end - start <= n_ctx
        assert first - start >= min(first, n_ctx - stride)  # context of the window's first scored token
        scored += range(first, end)
    assert scored == list(range(1, n))


def reference_logprobs(path, tokens, n_ctx, stride):
    rh, rw = reference.load(path)
    sequence = np.array([scoring.END_OF_TEXT] + tokens)
    parts = [reference.logprobs(rh, rw, sequence[start:end])[first - start - 1:]
             for start, first, end in scoring.windows(len(sequence), n_ctx, stride)]
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """An unusual shape: 5 heads of width 16, window 96."""
    path = str(tmp_path_factory.mktemp("odd") / "odd")
    return checkpoints.write_checkpoint(path, dict(n_vocab=50257, n_ctx=96, n_embd=80, n_head=5, n_layer=2), seed=3)


@pytest.mark.parametrize("length, stride", [(40, None), (250, None), (130, 7)])
def test_logprobs_equal_reference(odd_model, length, stride):
    hparams = model.load_hparams(odd_model)
    params = model.load_params(model.find_checkpoint(odd_model), hparams)
    tokens = np.random.RandomState(length).randint(0, 50257, length).tolist()
    got = scoring.score_tokens(scoring.logits_function(params, hparams), hparams, tokens, stride)
    want = reference_logprobs(odd_model, tokens, hparams.n_ctx, stride or hparams.n_ctx // 2)
    assert got.shape == (length,)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("stride", [96, 0, -1, 2.5, "wide"])
def test_bad_stride_is_rejected(odd_model, stride):
    hparams = model.load_hparams(odd_model)
    with pytest.raises(ValueError, match=r"^stride must be an integer from 1 to n_ctx - 1 \(95\). Received: ") as e:
        scoring.score_tokens(None, hparams, [1, 2], stride=stride)
    assert e.value.argument == "stride"  # the script says --stride


def run_score(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the script's own level
    return subprocess.run([sys.executable, os.path.join(REPO, "src", "score.py"), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_json_is_the_last_line_and_matches_reference(models_dir, tiny_model, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text("Hello world! GPT-2 scores text, token by token.\n", encoding="utf-8")
    result = run_score("--model_name", tiny_model, "--models_dir", models_dir, "--text_file", str(text_file), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no TensorFlow start-up lines
    lines = result.stdout.strip().splitlines()
    assert "tokens, mean negative log-likelihood" in lines[0]
    out = json.loads(lines[-1])
    assert set(out) == {"model_name", "n_tokens", "tokens", "logprobs", "nll", "perplexity"}
    assert out["model_name"] == tiny_model and out["n_tokens"] == len(out["tokens"]) == len(out["logprobs"])
    want = reference_logprobs(os.path.join(models_dir, tiny_model), out["tokens"], 64, 32)
    np.testing.assert_allclose(out["logprobs"], want, atol=1e-4, rtol=0)
    assert out["nll"] == pytest.approx(-np.mean(want), abs=1e-4)
    assert out["perplexity"] == pytest.approx(np.exp(out["nll"]), rel=1e-9)


@pytest.mark.parametrize("case, message", [
    ("empty", "is empty: there is nothing to score"),
    ("missing", "nope.txt is not found: give the text file to score, e.g. --text_file essay.txt"),
    ("folder", "is a folder: give the text file to score"),
    ("latin1", "is not UTF-8 text"),
    ("no-model", "download it with `python3 download_model.py 355M --models_dir"),
    ("no-file-flag", "--text_file is required"),
])
def test_bad_input_is_one_line_without_traceback(models_dir, tiny_model, tmp_path, case, message):
    path = tmp_path / "text.txt"
    path.write_bytes({"empty": b"", "latin1": "caf\u00e9".encode("latin-1")}.get(case, b"hello"))
    if case == "missing":
        path = tmp_path / "nope.txt"
    if case == "folder":
        path = tmp_path
    args = ["--model_name", "355M" if case == "no-model" else tiny_model, "--models_dir", models_dir]
    if case != "no-file-flag":
        args += ["--text_file", str(path)]
    with pytest.raises((ValueError, OSError), match=message.replace("(", r"\(")) as e:
        score.score(**dict(zip([a[2:] for a in args[::2]], args[1::2])))
    assert "\n" not in str(e.value)


def test_cli_error_exits_nonzero_with_one_line(models_dir, tmp_path):
    result = run_score("--model_name", "774M", "--models_dir", models_dir, "--text_file", str(tmp_path / "x.txt"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert result.stderr.count("\n") == 1  # that line alone


def test_cli_names_a_bad_argument_as_its_flag(models_dir, tiny_model, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text("hello", encoding="utf-8")
    result = run_score("--model_name", tiny_model, "--models_dir", models_dir, "--text_file", str(text_file),
                       "--stride", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: --stride must be an integer from 1 to n_ctx - 1 (63). " \
                                                     "Received: 0"


def test_models_dir_expands_home_and_variables(models_dir, tiny_model, tmp_path, monkeypatch, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text("hello", encoding="utf-8")
    monkeypatch.setenv("HOME", os.path.dirname(models_dir))
    monkeypatch.setenv("GPT2_TEST_MODELS", models_dir)
    for flag in ["~/" + os.path.basename(models_dir), "$GPT2_TEST_MODELS"]:  # as the script receives them
        score.score(model_name=tiny_model, models_dir=flag, text_file=str(text_file))
        assert "1 tokens, mean negative log-likelihood" in capsys.readouterr().out

@pytest.mark.parametrize("words, shown", [(200, True), (5, False)])
def test_a_text_of_several_windows_shows_a_bar_on_stderr(models_dir, tiny_model, tmp_path, monkeypatch, capsys,
                                                         words, shown):
    import tqdm
    monkeypatch.setattr(RecordingBar, "bars", [])
    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    text_file = tmp_path / "text.txt"
    text_file.write_text("hello world " * words, encoding="utf-8")
    score.score(model_name=tiny_model, models_dir=models_dir, text_file=str(text_file))
    (bar,) = RecordingBar.bars
    n_tokens = int(capsys.readouterr().out.split(": ")[1].split()[0])
    assert n_tokens > 64 if shown else n_tokens < 64  # the tiny model's window
    assert bar.kwargs["disable"] is (None if shown else True)  # None: shown where stderr is a terminal
    assert "file" not in bar.kwargs  # tqdm's default, stderr
    assert bar.kwargs["total"] == sum(bar.updates) == n_tokens


def test_a_perplexity_past_the_largest_float_is_infinite_and_null_in_json():
    assert scoring.perplexity(1.5) == math.exp(1.5)
    assert scoring.perplexity(1e4) == math.inf  # math.exp raises OverflowError
    assert json.dumps(scoring.json_safe({"nll": math.nan, "perplexity": math.inf, "logprobs": [-1.0, -math.inf],
                                         "n": 2})) == '{"nll": null, "perplexity": null, "logprobs": [-1.0, null], "n": 2}'


def test_a_text_the_model_finds_impossible_scores_infinite_perplexity(models_dir, tiny_model, tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr(scoring, "score_tokens", lambda *args, **kwargs: np.full(3, -1e4))
    text_file = tmp_path / "text.txt"
    text_file.write_text("hello there world", encoding="utf-8")
    score.score(tiny_model, models_dir, str(text_file), json=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "perplexity inf" in lines[0]
    out = json.loads(lines[-1])
    assert out["nll"] == 1e4 and out["perplexity"] is None


def test_a_vocabulary_with_ids_past_the_models_embeddings_is_one_line(models_dir, tiny_model, tmp_path):
    import shutil
    folder = shutil.copytree(os.path.join(models_dir, tiny_model), str(tmp_path / "models" / "other"))
    with open(os.path.join(folder, "encoder.json"), encoding="utf-8") as f:
        vocabulary = json.load(f)
    with open(os.path.join(folder, "encoder.json"), "w", encoding="utf-8") as f:
        json.dump({**vocabulary, "zzqx": 50257}, f)
    text_file = tmp_path / "text.txt"
    text_file.write_text("hello", encoding="utf-8")
    with pytest.raises(ValueError, match=r"encoder.json has token ids up to 50257, but the model has 50257 token "
                                         r"embeddings \(n_vocab in .*hparams.json\): the vocabulary is another "
                                         "model's") as e:
        score.score("other", str(tmp_path / "models"), str(text_file))
    assert "\n" not in str(e.value)


def test_a_vocabulary_of_its_own_is_scored_after_its_own_end_of_text(models_dir, tiny_model, tmp_path):
    """A model converted with a vocabulary whose <|endoftext|> is not 50256 (scored after 50256,
    its numbers were wrong and nothing said so)."""
    import shutil
    path = shutil.copytree(os.path.join(models_dir, tiny_model), str(tmp_path / "models" / "own"))
    with open(os.path.join(path, "encoder.json"), encoding="utf-8") as f:
        vocabulary = json.load(f)
    vocabulary["<|endoftext|>"], vocabulary["!"] = vocabulary["!"], vocabulary["<|endoftext|>"]  # 0 and 50256
    with open(os.path.join(path, "encoder.json"), "w", encoding="utf-8") as f:
        json.dump(vocabulary, f)
    text_file = tmp_path / "text.txt"
    text_file.write_text("Hello world", encoding="utf-8")
    result = run_score("--model_name", "own", "--models_dir", str(tmp_path / "models"), "--text_file", str(text_file),
                       "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    rh, rw = reference.load(path)
    want = reference.logprobs(rh, rw, np.array([0] + out["tokens"]))
    np.testing.assert_allclose(out["logprobs"], want, atol=1e-4, rtol=0)
    after_50256 = reference.logprobs(rh, rw, np.array([50256] + out["tokens"]))
    assert np.abs(np.array(out["logprobs"]) - after_50256).max() > 1e-3  # the test can tell the two apart


def test_weights_that_hold_nan_are_refused_as_they_load(models_dir, tiny_model, tmp_path):
    """Loaded, they made every logit NaN: scores of NaN, and samples of no token or of token 0."""
    import shutil
    import saving
    import tensorflow as tf
    path = shutil.copytree(os.path.join(models_dir, tiny_model), str(tmp_path / "models" / "nan"))
    reader = tf.train.load_checkpoint(os.path.join(path, "model.ckpt"))
    values = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    values["model/h1/mlp/c_fc/w"][0, 3, 5] = np.nan
    saving.write_tensors(os.path.join(path, "model.ckpt"), {name: tf.constant(v) for name, v in values.items()})
    text_file = tmp_path / "text.txt"
    text_file.write_text("hello", encoding="utf-8")
    with pytest.raises(ValueError, match=r"model.ckpt: model/h1/mlp/c_fc/w holds NaN or infinity: the checkpoint is "
                                         "damaged") as e:
        score.score("nan", str(tmp_path / "models"), str(text_file))
    assert "\n" not in str(e.value)
