#!/usr/bin/env python3
"""The peer side of bench/check_evaluate.py: each benchmark's protocol computed with Hugging Face's
tokenizer and PyTorch GPT-2, sharing no code with src/. Runs in the peer's Python:

    PEER_PYTHON bench/peer_evaluate.py MODEL_DIR VOCAB_DIR JOB_JSON_FILE

JOB_JSON_FILE: {"task", and for lambada "passages", "last_token", "stop_words"; for the
language-modelling tasks "text" (already detokenized), "units", "unit", "stride"; for CBT
"questions": [{"texts": [completed text of each candidate], "answer": index}]}. Prints one JSON
line of metrics. The model is read by ../shared/peer/hf_generate.py's `load` (transformers' own
converter of OpenAI's checkpoints).
"""
import json
import math
import os
import sys

import torch
from transformers import GPT2Tokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "peer"))
from hf_generate import load  # noqa: E402

EOT = 50256


def continuation(m, context, target, n_ctx):
    """(log-probabilities of target [k] float64, greedy argmax logits [k, vocab]) given context."""
    context = context or [EOT]
    ids = (context + target)[-n_ctx:]
    with torch.no_grad():
        logits = m(torch.tensor([ids])).logits[0, len(ids) - len(target) - 1:-1].double()  # predicts target
    return torch.log_softmax(logits, -1)[torch.arange(len(target)), torch.tensor(target)], logits


def split(tok, context, target):
    """lm-evaluation-harness's: trailing white space moves to the target; the target's ids are
    those of context + target past encode(context)'s length."""
    spaces = len(context) - len(context.rstrip())
    context, target = context[:len(context) - spaces], context[len(context) - spaces:] + target
    head = tok.encode(context)
    return head, tok.encode(context + target)[len(head):]


def lambada(m, tok, job, n_ctx):
    stop = torch.tensor([tok.decode([i]).strip().lower() in set(job["stop_words"]) for i in range(len(tok))])
    nll, right = [], []
    for passage in job["passages"]:
        if job["last_token"]:
            ids = tok.encode(passage)
            context, target = ids[:-1], ids[-1:]
        else:
            head, word = passage.rsplit(" ", 1)
            context, target = split(tok, head, " " + word)
        lp, logits = continuation(m, context, target, n_ctx)
        if job["stop_word_filter"]:
            logits[0, stop[:logits.shape[-1]]] = -math.inf
        nll.append(-float(lp.sum()))
        right.append(logits.argmax(-1).tolist() == target)
    return {"accuracy": sum(right) / len(right), "perplexity": math.exp(sum(nll) / len(nll))}


def language_modelling(m, tok, job, n_ctx):
    seq = [EOT] + tok.encode(job["text"])
    total, end, stride = 0.0, 0, job["stride"]
    while end < len(seq):  # each window scores the tokens the ones before did not
        new_end = min(len(seq), n_ctx if end == 0 else end + stride)
        start = max(0, new_end - n_ctx)
        with torch.no_grad():
            lp = torch.log_softmax(m(torch.tensor([seq[start:new_end]])).logits[0].double(), -1)
        first = max(end, 1)
        total -= float(lp[torch.arange(first - 1 - start, new_end - 1 - start), torch.tensor(seq[first:new_end])].sum())
        end = new_end
    out = {"nll": total, "n_tokens": len(seq) - 1, "token_perplexity": math.exp(total / (len(seq) - 1))}
    key = "word_perplexity" if job["unit"] == "word" else f"bits_per_{job['unit']}"
    out[key] = math.exp(total / job["units"]) if job["unit"] == "word" else total / math.log(2) / job["units"]
    return out


def cbt(m, tok, job, n_ctx):
    right = []
    for question in job["questions"]:
        texts = question["texts"]
        common = os.path.commonprefix(texts)
        cut = max(common.rfind(" "), 0)
        pairs = [split(tok, t[:cut], t[cut:]) for t in texts]
        keep = n_ctx - max(len(target) for _, target in pairs)  # the shared context is cut once (evaluation.py)
        scores = [float(continuation(m, (context or [EOT])[-keep:], target, n_ctx)[0].sum())
                  for context, target in pairs]
        right.append(scores.index(max(scores)) == question["answer"])
    return {"accuracy": sum(right) / len(right)}


def main():
    model_dir, vocab_dir, job_file = sys.argv[1:4]
    with open(job_file) as f:
        job = json.load(f)
    torch.manual_seed(0)
    m = load(model_dir)
    tok = GPT2Tokenizer(vocab_file=os.path.join(vocab_dir, "encoder.json"),
                        merges_file=os.path.join(vocab_dir, "vocab.bpe"))
    n_ctx = m.config.n_positions
    task = {"lambada": lambada, "cbt": cbt}.get(job["task"], language_modelling)
    print(json.dumps(task(m, tok, job, n_ctx)))


if __name__ == "__main__":
    main()
