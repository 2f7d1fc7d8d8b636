#!/usr/bin/env python3
"""Scores a text file under GPT-2: the log-probability of every token and the perplexity.

Each token is scored given <|endoftext|> and every token before it. A text longer than the
window (n_ctx, 1024 for the released models) is scored in overlapping windows: each window
after the first moves `stride` tokens on (n_ctx // 2 by default) and scores only the tokens the
earlier ones did not, so every token sees at least n_ctx - stride tokens of context.
"""
import json as jsonlib
import math

import cli
from checks import bad_argument, is_integer

END_OF_TEXT = 50256


def windows(n, n_ctx, stride):
    """Yields (start, first, end): score positions first..end-1 of a sequence of n with the
    model reading positions start..end-1 (end - start <= n_ctx)."""
    end = min(n, n_ctx)
    yield 0, 1, end
    while end < n:
        first, end = end, min(end + stride, n)
        yield end - n_ctx, first, end


def logits_function(params, hparams):
    """X [1, n] int32 -> logits [1, n, n_vocab]: `model.model` compiled once for every n."""
    import model  # here, not above: cli.main answers --help and bad flags before TensorFlow loads
    forward = model.compile_model(params, hparams)
    past = model.empty_past(hparams, 1, params["wte"].dtype)
    return lambda X: forward(X, past)["logits"]


def score_tokens(logits_fn, hparams, tokens, stride=None, bar=False):
    """Natural-log probability of each of `tokens` after <|endoftext|> and the ones before it;
    logits_fn is `logits_function`'s. `bar` shows a progress bar of the tokens on stderr."""
    import numpy as np
    import tensorflow as tf
    from tqdm import tqdm
    stride = hparams.n_ctx // 2 if stride is None else stride
    if not is_integer(stride) or not 1 <= stride < hparams.n_ctx:
        raise bad_argument("stride", f"must be an integer from 1 to n_ctx - 1 ({hparams.n_ctx - 1})", stride)
    sequence = np.array([END_OF_TEXT] + list(tokens), np.int32)
    logprobs = []
    with tqdm(total=len(tokens), unit="token", unit_scale=True, desc="scoring", disable=not bar or None) as progress:
        for start, first, end in windows(len(sequence), hparams.n_ctx, stride):
            logits = logits_fn(sequence[None, start:end])[0]  # [end - start, n_vocab]
            logp = tf.nn.log_softmax(logits[first - 1 - start:end - 1 - start])  # predicts first..end-1
            targets = sequence[first:end]
            logprobs.append(tf.gather(logp, targets, batch_dims=1).numpy())
            progress.update(end - first)
    return np.concatenate(logprobs).astype(np.float64)


def read_text(text_file):
    """The UTF-8 text of a non-empty file."""
    if text_file is None:
        raise ValueError("--text_file is required: the text to score, e.g. --text_file essay.txt")
    try:
        with open(str(text_file), encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{text_file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text:
        raise ValueError(f"{text_file} is empty: there is nothing to score")
    return text


def score(model_name="124M", models_dir="models", text_file=None, json=False, stride=None, dtype="float32"):
    """Scores a text file with GPT-2.

    :model_name=124M : String, which model to use
    :models_dir=models : String, the folder holding the model folders
    :text_file=None : String, path of the UTF-8 text file to score
    :json=False : Boolean, end the output with one line of JSON: model_name, n_tokens, tokens,
     logprobs (natural log, one per token), nll (mean negative log-likelihood, nats), perplexity
    :stride=None : Integer, how far each window moves on a text longer than the window
     (default n_ctx // 2); a smaller stride gives every token more context and costs more time
    :dtype=float32 : String, float32, bfloat16 or float16 weights
    """
    text = read_text(text_file)
    enc, hparams, params = cli.load(model_name, models_dir, dtype)
    tokens = enc.encode(text)
    logprobs = score_tokens(logits_function(params, hparams), hparams, tokens, stride)
    nll = float(-logprobs.mean())
    print(f"{text_file}: {len(tokens)} tokens, mean negative log-likelihood {nll:.4f} nats, "
          f"perplexity {math.exp(nll):.3f} ({model_name}, {dtype})")
    if json:
        print(jsonlib.dumps({"model_name": str(model_name), "n_tokens": len(tokens), "tokens": tokens,
                             "logprobs": logprobs.tolist(), "nll": nll, "perplexity": math.exp(nll)}))


if __name__ == "__main__":
    cli.main(score)
