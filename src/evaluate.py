#!/usr/bin/env python3
"""Evaluates GPT-2 zero-shot on a benchmark of the paper's Table 3, by a written protocol.

    python3 src/evaluate.py --model_name 124M --task lambada [--json]
    python3 src/evaluate.py --model_name 124M --task wikitext2 --data_file wikitext-2/wiki.test.tokens

The protocols (evaluation.py) and file formats (benchmarks.py) are in README.md, Evaluate.
LAMBADA is OpenAI's test set, downloaded to --data_dir when --data_file is not given; the other
benchmarks are read from the file given.
"""
import json as jsonlib
import sys

import benchmarks
import cli
import scoring
from checks import is_integer


def protocol(task, stride, last_token, stop_word_filter):
    """What was computed, in words, for the output."""
    if task == "lambada":
        target = "the last BPE token" if last_token else "' ' + the last word (lambada_openai)"
        choice = ", the first token's greedy choice among non-stop-words" if stop_word_filter else ""
        return {"detokenizer": "none", "scoring": f"target: {target}; accuracy: every target token greedy{choice}; "
                "perplexity: exp(mean over passages of the target's negative log-likelihood)"}
    if task in benchmarks.LANGUAGE_MODELLING:
        detokenizer, unit = benchmarks.LANGUAGE_MODELLING[task]
        return {"detokenizer": detokenizer, "stride": stride,
                "scoring": f"the detokenized text as one text after <|endoftext|>, in windows (score.py); per {unit}"}
    return {"detokenizer": "cbt", "scoring": "the candidate whose completed query, from the candidate to its "
            "end, is most likely given the 20 sentences and the query before it"}


def check_flags(task, data_file, batch_size, last_token, stop_word_filter):
    """ValueError for flags that cannot go together, before anything loads."""
    benchmarks.check_task(task)
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"--batch_size must be a positive integer. Received: {batch_size!r}")
    if (last_token or stop_word_filter) and task != "lambada":
        raise ValueError("--last_token and --stop_word_filter are LAMBADA's variants: use them with --task lambada")
    if data_file is None and task != "lambada":
        raise ValueError(f"--data_file is required for --task {task}: the benchmark's test file (README.md, Evaluate)")


def read_data(task, data_file):
    """The task's file read and checked: (text, units), passages or CBT examples."""
    if task in benchmarks.LANGUAGE_MODELLING:
        return benchmarks.read_language_modelling(data_file, task)
    if task == "lambada":
        return benchmarks.read_lambada(data_file)
    return benchmarks.read_cbt(data_file, task)


def warn_if_not_openais_lambada(data_file, n_passages):
    """Say on stderr, in one line, when a LAMBADA file given is not OpenAI's: another variant
    (a cleaned or translated one) may be meant, but its figures are not the paper's."""
    difference = benchmarks.lambada_difference(data_file, n_passages)
    if difference is not None:
        print(f"warning: {data_file} is not OpenAI's {benchmarks.LAMBADA_FILE} ({difference}): its figures "
              "are not comparable with the paper's or lm-evaluation-harness's lambada_openai", file=sys.stderr)


def run_task(task, enc, hparams, params, data_file, batch_size, stride, last_token, stop_word_filter, data=None):
    """The task's metrics and the number of items scored; `data`: read_data's, else it is read."""
    import evaluation
    data = read_data(task, data_file) if data is None else data
    if task in benchmarks.LANGUAGE_MODELLING:
        text, units = data
        logits_fn = scoring.logits_function(params, hparams)
        return evaluation.language_modelling(logits_fn, hparams, enc, text, units, task, stride), units
    if task == "lambada":
        passages = data
        metrics = evaluation.lambada(evaluation.continuation_function(params, hparams), hparams, enc, passages,
                                     batch_size, last_token=last_token, stop_word_filter=stop_word_filter)
        return metrics, len(passages)
    examples = data
    return evaluation.cbt(evaluation.shared_context_function(params, hparams), hparams, enc, examples), len(examples)


def evaluate(model_name="124M", models_dir="models", task=None, data_file=None, data_dir="data", json=False,
             batch_size=16, stride=None, last_token=False, stop_word_filter=False, dtype="float32",
             lambada_url=benchmarks.LAMBADA_URL):
    """Evaluates GPT-2 on one benchmark of the paper's Table 3.

    :model_name=124M : String, which model to use
    :models_dir=models : String, the folder holding the model folders
    :task=None : String, lambada, wikitext2, wikitext103, ptb, 1bw, enwik8, text8, cbt-cn or cbt-ne
    :data_file=None : String, the benchmark's test file (formats: README.md, Evaluate); for
     lambada, default: OpenAI's lambada_test.jsonl in --data_dir, downloaded when absent and
     checked against OpenAI's size and SHA-256 (a file given that differs gets a warning)
    :data_dir=data : String, where LAMBADA is downloaded to
    :json=False : Boolean, end the output with one line of JSON: the task, protocol and metrics
    :batch_size=16 : Integer, passages scored together (lambada); cbt-* scores a question's
     candidates together, after its context
    :stride=None : Integer, how far each window moves on a text longer than the window
     (language-modelling tasks; default n_ctx // 2, as score.py)
    :last_token=False : Boolean, lambada: the paper's variant, score the last BPE token only
    :stop_word_filter=False : Boolean, lambada: the paper's variant, the first target token's
     greedy choice is made among tokens that are not stop words
    :dtype=float32 : String, float32, bfloat16 or float16 weights
    :lambada_url=https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl : String,
     where LAMBADA is downloaded from (a mirror)
    """
    check_flags(task, data_file, batch_size, last_token, stop_word_filter)
    given = data_file is not None
    if not given:
        data_file = benchmarks.fetch_lambada(cli.expand_dir(data_dir), str(lambada_url))
    data = read_data(task, data_file)  # before the model: a wrong file costs no loading
    if task == "lambada" and given:
        warn_if_not_openais_lambada(data_file, len(data))
    enc, hparams, params = cli.load(model_name, models_dir, dtype)
    metrics, n_items = run_task(task, enc, hparams, params, data_file, batch_size, stride, last_token,
                                stop_word_filter, data)
    shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items() if isinstance(value, float))
    print(f"{task} ({data_file}, {n_items} {'units' if task in benchmarks.LANGUAGE_MODELLING else 'items'}): "
          f"{shown} ({model_name}, {dtype})")
    if json:
        stride = hparams.n_ctx // 2 if stride is None else stride
        print(jsonlib.dumps({"task": task, "model_name": str(model_name), "data_file": str(data_file),
                             **protocol(task, stride, last_token, stop_word_filter),
                             "n_original_units" if task in benchmarks.LANGUAGE_MODELLING else "n_items": n_items,
                             "metrics": scoring.json_safe(metrics)}))


if __name__ == "__main__":
    cli.main(evaluate)
