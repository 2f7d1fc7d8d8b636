"""Scoring tokens under GPT-2: each token's log-probability given <|endoftext|> and the tokens
before it, in overlapping windows on a sequence longer than the model's window. score.py is its
command line; evaluation.py scores the paper's benchmarks with it.

A window after the first moves `stride` tokens on (n_ctx // 2 by default) and scores only the
tokens the earlier ones did not, so every token sees at least n_ctx - stride tokens of context.
"""
import math

from checks import bad_argument, is_integer

END_OF_TEXT = 50256  # <|endoftext|> in GPT-2's vocabulary; a model with a vocabulary of its own has its own


def start_token(enc):
    """The id a text is scored after: `enc`'s <|endoftext|> (END_OF_TEXT in GPT-2's vocabulary,
    another in a model converted with a vocabulary of its own; `encoder.get_encoder` refuses a
    vocabulary without it)."""
    return enc.encoder["<|endoftext|>"]


def perplexity(nll):
    """exp(nll), a mean negative log-likelihood in nats: infinity past the largest float (a
    model that gives the text almost no probability), not an OverflowError."""
    try:
        return math.exp(nll)
    except OverflowError:
        return math.inf


def json_safe(value):
    """value with every float that is not finite (an infinite perplexity, the NaN of a model
    whose weights hold NaN) as None, so that json.dumps writes JSON's null, which strict
    parsers read, not Infinity or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


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
    import model  # here, not above: score.py answers --help and bad flags before TensorFlow loads
    forward = model.compile_model(params, hparams)
    past = model.empty_past(hparams, 1, params["wte"].dtype)
    return lambda X: forward(X, past)["logits"]


def score_tokens(logits_fn, hparams, tokens, stride=None, bar=False, start=END_OF_TEXT):
    """Natural-log probability of each of `tokens` after <|endoftext|> (`start`: `start_token`'s
    id) and the ones before it; logits_fn is `logits_function`'s. `bar` shows a progress bar of
    the tokens on stderr when there is more than one window to score (and stderr is a terminal,
    tqdm's default)."""
    import numpy as np
    import tensorflow as tf
    from tqdm import tqdm
    stride = hparams.n_ctx // 2 if stride is None else stride
    if not is_integer(stride) or not 1 <= stride < hparams.n_ctx:
        raise bad_argument("stride", f"must be an integer from 1 to n_ctx - 1 ({hparams.n_ctx - 1})", stride)
    sequence = np.array([start] + list(tokens), np.int32)
    logprobs = []
    spans = list(windows(len(sequence), hparams.n_ctx, stride))
    shown = bar and len(spans) > 1
    with tqdm(total=len(tokens), unit="token", unit_scale=True, desc="scoring", disable=not shown or None) as progress:
        for start, first, end in spans:
            logits = logits_fn(sequence[None, start:end])[0]  # [end - start, n_vocab]
            logp = tf.nn.log_softmax(logits[first - 1 - start:end - 1 - start])  # predicts first..end-1
            targets = sequence[first:end]
            logprobs.append(tf.gather(logp, targets, batch_dims=1).numpy())
            progress.update(end - first)
    return np.concatenate(logprobs).astype(np.float64)
