"""Half precision: bfloat16 and float16 weights give float32's numbers up to their rounding."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import cli
import model
import sample
import score
from conftest import REPO

# Largest logit and log-probability moves allowed against float32 on the tiny model (measured:
# bfloat16 0.12 and 0.032, float16 0.015 and 0.006).
TOLERANCE = {"bfloat16": (0.25, 0.1), "float16": (0.05, 0.02)}


@pytest.fixture(scope="module")
def tiny(models_dir, tiny_model):
    path = os.path.join(models_dir, tiny_model)
    hparams = model.load_hparams(path)
    load = lambda dtype: model.load_params(model.find_checkpoint(path), hparams, dtype)
    return hparams, load


def tokens(batch, n):
    return np.random.RandomState(1).randint(0, 50257, (batch, n)).astype(np.int32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_logits_and_logprobs_stay_close_to_float32(tiny, dtype):
    hparams, load = tiny
    params, full = load(tf.as_dtype(dtype)), load(tf.float32)
    assert params["h"][0]["mlp"]["c_fc"]["w"].dtype == tf.as_dtype(dtype)
    assert params["h"][0]["ln_1"]["g"].dtype == params["ln_f"]["b"].dtype == tf.float32  # norms compute in float32
    x = tokens(2, 30)
    logits = model.model(params, hparams, x)["logits"]
    assert logits.dtype == tf.float32  # softmax and sampling stay in float32
    np.testing.assert_allclose(logits, model.model(full, hparams, x)["logits"], atol=TOLERANCE[dtype][0], rtol=0)
    half = score.score_tokens(model.compile_model(params, hparams), hparams, x[0].tolist())
    exact = score.score_tokens(model.compile_model(full, hparams), hparams, x[0].tolist())
    np.testing.assert_allclose(half, exact, atol=TOLERANCE[dtype][1], rtol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_greedy_sampling_picks_the_top_token(tiny, dtype):
    """Each greedy token is the plain half-precision model's top choice, up to its rounding."""
    hparams, load = tiny
    params = load(tf.as_dtype(dtype))
    out = sample.Sampler(params, hparams, top_k=1).sample(tokens(2, 4), 10, seed=1)
    for n in range(4, 14):
        logits = model.model(params, hparams, out[:, :n])["logits"][:, -1].numpy()
        chosen = logits[np.arange(2), out[:, n]]
        assert (chosen >= logits.max(-1) - TOLERANCE[dtype][0]).all()


def test_masked_scores_do_not_overflow_in_float16(tiny):
    hparams, load = tiny
    params = load(tf.float16)
    logits = model.model(params, hparams, tokens(1, 64))["logits"]
    assert np.isfinite(logits.numpy()).all()


FROZEN_WEIGHTS_RUN = """
import json, sys
import numpy as np, tensorflow as tf
import model, sample, score

path, dtype = sys.argv[1], tf.as_dtype(sys.argv[2])
hparams = model.load_hparams(path)
params = model.load_params(model.find_checkpoint(path), hparams, dtype)
context = np.random.RandomState(1).randint(0, hparams.n_vocab, (2, 5))
tokens = sample.Sampler(params, hparams, top_k=40).sample(context, 20, seed=3)
logprobs = score.score_tokens(model.compile_model(params, hparams), hparams, tokens[0].tolist())
# The hazard the setting brings: a fused matmul-plus-bias keeps the weights of its first call.
fused = tf.function(lambda x, w, b: tf.matmul(x, w) + b)
x, b = tf.ones([1, 64], dtype), tf.zeros([64], dtype)
stale = fused(x, tf.ones([64, 64], dtype), b)[0, 0] == fused(x, 2 * tf.ones([64, 64], dtype), b)[0, 0]
print(json.dumps({"tokens": tokens.tolist(), "logprobs": [float(p) for p in logprobs], "stale": bool(stale)}))
"""


def test_frozen_weights_change_no_number(models_dir, tiny_model):
    """The scripts' TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 gives the same samples and scores as without
    it, though it does take effect (a fused matmul whose weights change goes stale). bfloat16 only:
    float16 matmuls reach oneDNN only on CPUs with AVX512-FP16."""
    dtype = "bfloat16"

    def run(frozen):
        env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src"), "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1" if frozen else "0"}
        out = subprocess.run([sys.executable, "-c", FROZEN_WEIGHTS_RUN, os.path.join(models_dir, tiny_model), dtype],
                             capture_output=True, text=True, env=env, check=True).stdout
        return json.loads(out.splitlines()[-1])
    frozen, plain = run(True), run(False)
    assert frozen["stale"] and not plain["stale"]
    assert frozen["tokens"] == plain["tokens"]
    assert frozen["logprobs"] == plain["logprobs"]


def test_scripts_freeze_weights_only_in_half_precision(monkeypatch):
    monkeypatch.delenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", raising=False)
    cli.freeze_weights(tf.float32)
    assert "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS" not in os.environ
    cli.freeze_weights(tf.bfloat16)
    assert os.environ["TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"] == "1"
