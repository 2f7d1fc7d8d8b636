#!/usr/bin/env python3
"""Scores a text file under GPT-2: the log-probability of every token and the perplexity.

Each token is scored given <|endoftext|> and every token before it. A text longer than the
window (n_ctx, 1024 for the released models) is scored in overlapping windows: each window
after the first moves `stride` tokens on (n_ctx // 2 by default) and scores only the tokens the
earlier ones did not, so every token sees at least n_ctx - stride tokens of context. A text of
more than one window shows a progress bar on stderr, as evaluate.py does; stdout holds the results.
"""
import json as jsonlib

import cli
import scoring


def read_text(text_file):
    """The UTF-8 text of a non-empty file."""
    if text_file is None:
        raise ValueError("--text_file is required: the text to score, e.g. --text_file essay.txt")
    try:
        with open(str(text_file), encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{text_file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (FileNotFoundError, IsADirectoryError) as e:
        what = "not found" if isinstance(e, FileNotFoundError) else "a folder"
        raise type(e)(f"{text_file} is {what}: give the text file to score, e.g. --text_file essay.txt") from None
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
    logprobs = scoring.score_tokens(scoring.logits_function(params, hparams), hparams, tokens, stride, bar=True,
                                    start=scoring.start_token(enc))
    nll = float(-logprobs.mean())
    print(f"{text_file}: {len(tokens)} tokens, mean negative log-likelihood {nll:.4f} nats, "
          f"perplexity {scoring.perplexity(nll):.3f} ({model_name}, {dtype})")
    if json:
        print(jsonlib.dumps(scoring.json_safe({"model_name": str(model_name), "n_tokens": len(tokens), "tokens": tokens,
                                               "logprobs": logprobs.tolist(), "nll": nll,
                                               "perplexity": scoring.perplexity(nll)})))


if __name__ == "__main__":
    cli.main(score)
