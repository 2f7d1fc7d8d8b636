"""Half precision: bfloat16 and float16 weights give float32's numbers up to their rounding."""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

import fast
import model
import scoring
from helpers import random_tokens

# Largest logit and log-probability moves allowed against float32 on the tiny model (measured:
# bfloat16 0.12 and 0.032, float16 0.015 and 0.006).
TOLERANCE = {"bfloat16": (0.25, 0.1), "float16": (0.05, 0.02)}


@pytest.fixture(scope="module")
def tiny(models_dir, tiny_model):
    path = os.path.join(models_dir, tiny_model)
    hparams = model.load_hparams(path)
    load = lambda dtype: model.load_params(model.find_checkpoint(path), hparams, dtype)
    return hparams, load


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_logits_and_logprobs_stay_close_to_float32(tiny, dtype):
    hparams, load = tiny
    params, full = load(tf.as_dtype(dtype)), load(tf.float32)
    assert params["h"][0]["mlp"]["c_fc"]["w"].dtype == tf.as_dtype(dtype)
    assert params["h"][0]["ln_1"]["g"].dtype == params["ln_f"]["b"].dtype == tf.float32  # norms compute in float32
    x = random_tokens(hparams.n_vocab, 2, 30, seed=1)
    logits = model.model(params, hparams, x)["logits"]
    assert logits.dtype == tf.float32  # softmax and sampling stay in float32
    np.testing.assert_allclose(logits, model.model(full, hparams, x)["logits"], atol=TOLERANCE[dtype][0], rtol=0)
    half = scoring.score_tokens(scoring.logits_function(params, hparams), hparams, x[0].tolist())
    exact = scoring.score_tokens(scoring.logits_function(full, hparams), hparams, x[0].tolist())
    np.testing.assert_allclose(half, exact, atol=TOLERANCE[dtype][1], rtol=0)


# The decode loop's ways for half precision: XLA, and oneDNN's native kernels, which a CPU with
# bfloat16 instructions takes for bfloat16 (fast.choices_for) and which any CPU can run: all its
# choices (fast.ONEDNN, whose halves add their products rounded), and the same on whole matrices.
# At batch 1 the oneDNN ways keep the cache in float32 (fast.Choices.float32_attention).
WAYS = {"xla": fast.Choices(xla=True), "onednn": fast.ONEDNN,
        "onednn-whole": dataclasses.replace(fast.ONEDNN, column_halves=False)}


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_sampling_picks_the_top_token(tiny, dtype, way, batch):
    """Each greedy token is the plain half-precision model's top choice, up to its rounding."""
    hparams, load = tiny
    params = load(tf.as_dtype(dtype))
    sampler = fast.Sampler(params, hparams, top_k=1, choices=WAYS[way])
    out = sampler.sample(random_tokens(hparams.n_vocab, batch, 4, seed=1), 10, seed=1)
    for n in range(4, 14):
        logits = model.model(params, hparams, out[:, :n])["logits"][:, -1].numpy()
        chosen = logits[np.arange(batch), out[:, n]]
        assert (chosen >= logits.max(-1) - TOLERANCE[dtype][0]).all()


def test_masked_scores_do_not_overflow_in_float16(tiny):
    hparams, load = tiny
    params = load(tf.float16)
    logits = model.model(params, hparams, random_tokens(hparams.n_vocab, 1, 64, seed=1))["logits"]
    assert np.isfinite(logits.numpy()).all()


