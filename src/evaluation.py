"""The protocols of the GPT-2 paper's zero-shot benchmarks and their metrics (README, Evaluate).

- LAMBADA, as lm-evaluation-harness's `lambada_openai`: the context is the passage before its
  last space, the target " " + the last word, tokenized as `encode(context + target)` less
  `encode(context)`. Accuracy: every target token is the greedy choice. Perplexity: exp of the
  mean over passages of the target's negative log-likelihood (summed over its tokens).
  `last_token`: the paper's variant, the target is the passage's last BPE token alone.
  `stop_word_filter`: the paper's variant, the greedy choice at the target's first token is made
  among the tokens that are not a stop word (STOP_WORDS, after stripping spaces, any case).
- Language modelling: the detokenized text is scored as one text, as `score.py` scores one
  (`scoring.score_tokens`: after <|endoftext|>, in windows moving `stride`); perplexity per BPE
  token, per original word (the paper's scaling: the same log-likelihood over the benchmark's
  own word count), bits per byte or per character.
- CBT: the candidate whose completed query, given the 20 sentences before it, is most likely:
  the log-likelihood of the query from the candidate to its end (the paper's "probability of
  each choice and the rest of the sentence conditioned on this choice"). The candidates share
  one context, which runs once per question: its keys and values (`past`) are tiled across the
  candidates, a batch of right-padded rows (`shared_context_function`). When the context and the
  longest candidate's target do not fit the window, the context is cut from the left once, to
  fit beside that longest target, and every candidate is scored after the same cut context
  (a row of its own per candidate would let a shorter target keep more of the context).

LAMBADA's pairs (context, target) are scored in batches of equal-length rows, right-padded:
attention is causal, so padding after a row's tokens changes none of its logits; the output
layer runs at the target positions only.
"""
import math
import os

import numpy as np

import benchmarks
import detokenizers
import scoring

STOP_WORDS = frozenset("""a about above after again against all am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours ourselves out over own same she should so some such than that
the their theirs them themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves""".split())


def continuation_function(params, hparams):
    """Compiled once: (X [batch, seq] int32, positions [batch, k] int32, targets [batch, k] int32,
    banned [n_vocab] float32) -> (logprobs [batch, k] of targets at positions, greedy [batch, k],
    greedy with `banned` added to the logits [batch, k])."""
    import tensorflow as tf
    import model

    def run(X, positions, targets, banned):
        h, _ = model.hidden_states(params, hparams, X)  # [batch, seq, n_embd]
        logits = model.unembed(params, tf.gather(h, positions, batch_dims=1))  # [batch, k, n_vocab]
        logprobs = tf.gather(tf.nn.log_softmax(logits), targets, batch_dims=2)  # [batch, k]
        return (logprobs, tf.argmax(logits, -1, output_type=tf.int32),
                tf.argmax(logits + banned, -1, output_type=tf.int32))
    signature = [tf.TensorSpec([None, None], tf.int32)] * 3 + [tf.TensorSpec([hparams.n_vocab], tf.float32)]
    return tf.function(run, input_signature=signature)


def shared_context_function(params, hparams):
    """Compiled once: (context [1, c] int32, targets [n, k] int32, rows right-padded) ->
    logprobs [n, k] of each row's targets following the one context. The context runs once;
    its keys and values are tiled across the rows, which attend to them as `past`."""
    import tensorflow as tf
    import model

    def run(context, targets):
        h, past = model.hidden_states(params, hparams, context)  # [1, c, n_embd], [1, n_layer, 2, heads, c, head_dim]
        n = tf.shape(targets)[0]
        past = tf.tile(past, [n, 1, 1, 1, 1, 1])  # [n, n_layer, 2, heads, c, head_dim]
        g, _ = model.hidden_states(params, hparams, targets[:, :-1], past)  # [n, k - 1, n_embd]
        states = tf.concat([tf.tile(h[:, -1:], [n, 1, 1]), g], axis=1)  # [n, k, n_embd]: state j predicts target j
        logits = model.unembed(params, states)  # [n, k, n_vocab]
        return tf.gather(tf.nn.log_softmax(logits), targets, batch_dims=2)  # [n, k]
    signature = [tf.TensorSpec([1, None], tf.int32), tf.TensorSpec([None, None], tf.int32)]
    return tf.function(run, input_signature=signature)


def fit_window(context, target, n_ctx, start=scoring.END_OF_TEXT):
    """(context, target) with the context cut from the left to fit the window, as
    lm-evaluation-harness does; an empty context becomes <|endoftext|> (`start`, its id)."""
    context = list(context) or [start]
    if len(target) >= n_ctx:
        raise ValueError(f"a target of {len(target)} tokens does not fit the model's window of {n_ctx}")
    return context[max(0, len(context) + len(target) - n_ctx):], list(target)


def batch_rows(pairs):
    """(X [batch, seq], positions [batch, k], targets [batch, k]) for pairs that fit the window:
    position j of a row holds the logits that predict its target token j."""
    length = max(len(c) + len(t) for c, t in pairs)  # any length runs the one trace; no padding to a bucket
    k = max(len(t) for _, t in pairs)
    X = np.zeros([len(pairs), length], np.int32)
    positions = np.zeros([len(pairs), k], np.int32)
    targets = np.zeros([len(pairs), k], np.int32)
    for row, (context, target) in enumerate(pairs):
        X[row, :len(context) + len(target)] = context + target
        positions[row, :len(target)] = len(context) - 1 + np.arange(len(target))
        targets[row, :len(target)] = target
    return X, positions, targets


def score_pairs(function, hparams, pairs, batch_size, banned, desc="scoring", start=scoring.END_OF_TEXT):
    """[(context ids, target ids)] -> (logprobs, greedy, filtered), each a list with one array
    per pair of its target's length; see `continuation_function`. Shows a progress bar. Pairs
    are batched in order of length, so that a batch's rows are padded little."""
    from tqdm import tqdm
    pairs = [fit_window(c, t, hparams.n_ctx, start) for c, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    results = [None] * len(pairs)
    with tqdm(total=len(pairs), desc=desc, unit="row", disable=None) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            outputs = [o.numpy() for o in function(*batch_rows([pairs[i] for i in chunk]), banned)]
            for row, i in enumerate(chunk):
                results[i] = [o[row, :len(pairs[i][1])] for o in outputs]
            bar.update(len(chunk))
    return [list(column) for column in zip(*results)]


def split_encoding(enc, context, target):
    """(ids of context, ids of target) as lm-evaluation-harness makes them: white space ending
    the context moves to the target, the context is `encode(context)`, and the target is what
    `encode(context + target)` holds after as many ids."""
    spaces = len(context) - len(context.rstrip())
    context, target = context[:len(context) - spaces], context[len(context) - spaces:] + target
    head = enc.encode(context)
    return head, enc.encode(context + target)[len(head):]


def lambada_pairs(enc, passages, last_token=False):
    """(context ids, target ids) of each passage."""
    if last_token:
        return [(ids[:-1], ids[-1:]) for ids in map(enc.encode, passages)]
    return [split_encoding(enc, *passage_split(passage)) for passage in passages]


def passage_split(passage):
    """lambada_openai's split: (the passage before its last space, " " + its last word)."""
    context, word = passage.rsplit(" ", 1)
    return context, " " + word


def banned_tokens(enc, n_vocab, stop_word_filter):
    """[n_vocab] float32: -1e9 at each token whose text, stripped of spaces, is a stop word
    (in any case) when filtering, else 0."""
    banned = np.zeros([n_vocab], np.float32)
    if stop_word_filter:
        for token, text in enumerate(enc.decode([t]) for t in range(min(n_vocab, len(enc.decoder)))):
            if text.strip().lower() in STOP_WORDS:
                banned[token] = -1e9
    return banned


def lambada(function, hparams, enc, passages, batch_size, *, last_token=False, stop_word_filter=False):
    """{"accuracy", "perplexity", "n_passages", "n_target_tokens"}."""
    pairs = lambada_pairs(enc, passages, last_token)
    logprobs, greedy, filtered = score_pairs(function, hparams, pairs, batch_size,
                                             banned_tokens(enc, hparams.n_vocab, stop_word_filter), desc="LAMBADA",
                                             start=scoring.start_token(enc))
    chosen = [np.concatenate([f[:1], g[1:]]) for f, g in zip(filtered, greedy)] if stop_word_filter else greedy
    correct = [np.array_equal(c, target) for c, (_, target) in zip(chosen, pairs)]
    nll = [-float(np.sum(lp)) for lp in logprobs]
    return {"accuracy": float(np.mean(correct)), "perplexity": scoring.perplexity(float(np.mean(nll))),
            "n_passages": len(pairs), "n_target_tokens": int(sum(len(t) for _, t in pairs))}


def language_modelling(logits_fn, hparams, enc, text, units, task, stride=None):
    """{"nll", "n_tokens", "token_perplexity", and the paper's metric}: `units` is the original
    text's length in the task's unit (benchmarks.LANGUAGE_MODELLING)."""
    detokenizer, unit = benchmarks.LANGUAGE_MODELLING[task]
    tokens = enc.encode(detokenizers.detokenize(detokenizer, text))
    nll = -float(np.sum(scoring.score_tokens(logits_fn, hparams, tokens, stride, bar=True,
                                             start=scoring.start_token(enc))))
    metrics = {"nll": nll, "n_tokens": len(tokens), "token_perplexity": scoring.perplexity(nll / len(tokens))}
    if unit == "word":
        metrics["word_perplexity"] = scoring.perplexity(nll / units)
    else:
        metrics[f"bits_per_{unit}"] = nll / math.log(2) / units
    return metrics


def cbt_pairs(enc, example):
    """(context ids, target ids) of each candidate: every candidate's completed text, detokenized,
    split at the last space before the texts first differ, so that all share one context."""
    texts = [detokenizers.detokenize("cbt", " ".join(example.context + [example.query.replace(benchmarks.BLANK, c)]))
             for c in example.candidates]
    common = os.path.commonprefix(texts)
    cut = max(common.rfind(" "), 0) if len(set(texts)) > 1 else len(common)
    return [split_encoding(enc, text[:cut], text[cut:]) for text in texts]


def shared_context_scores(function, hparams, pairs, start=scoring.END_OF_TEXT):
    """[(context ids, target ids)] sharing one context -> each target's log-likelihood (a float),
    by `shared_context_function`: the context cut from the left once, to fit beside the longest
    target (fit_window)."""
    contexts, targets = zip(*pairs)
    assert all(c == contexts[0] for c in contexts), "the pairs must share one context"
    k = max(1, *map(len, targets))  # a row needs a column even when no candidate has a target
    context, _ = fit_window(contexts[0], [0] * k, hparams.n_ctx, start)
    rows = np.zeros([len(targets), k], np.int32)  # [n, k], right-padded
    for row, target in enumerate(targets):
        rows[row, :len(target)] = target
    logprobs = function(np.array([context], np.int32), rows).numpy()  # [n, k]
    return [float(np.sum(lp[:len(t)])) for lp, t in zip(logprobs, targets)]


def cbt(function, hparams, enc, examples):
    """{"accuracy", "n_questions"}, `function` being `shared_context_function`'s: a question is
    right when its answer's completed query is the most likely (ties: the first candidate in the
    file's order). Shows a progress bar."""
    from tqdm import tqdm
    correct = []
    for number, example in enumerate(tqdm(examples, desc="CBT", unit="question", disable=None), 1):
        try:
            scores = shared_context_scores(function, hparams, cbt_pairs(enc, example), scoring.start_token(enc))
        except ValueError as e:  # a candidate's completed query longer than the window
            raise ValueError(f"CBT question {number} (query {example.query[:40]!r}): {e}; CBT's queries are "
                             "one sentence: check the file") from None
        correct.append(example.candidates[int(np.argmax(scores))] == example.answer)
    return {"accuracy": float(np.mean(correct)), "n_questions": len(examples)}
