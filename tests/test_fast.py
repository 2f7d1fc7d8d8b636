"""fast.py: the cached, compiled sampler computes what model.py and sample.py compute."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import checkpoints
import fast
import model
import sample
import training
from helpers import REPO, load, random_tokens, reference_logits

LOW = np.finfo(np.float32).min

# The decode loop's ways, on any CPU: oneDNN's is what a CPU with bfloat16 instructions takes for
# bfloat16 and float32 (fast.choices_for); without those instructions oneDNN emulates them, with
# the same results.
ONEDNN = fast.ONEDNN
WAYS = {"xla": fast.Choices(xla=True), "no-xla": fast.Choices(), "onednn": ONEDNN}
# The prompt's pass's way where fused kernels keep converted weights (fast.prompt_choices).
EINSUM = dataclasses.replace(ONEDNN, fused_matmuls=False, einsum_matmuls=True)


# --- the sampling step's speed-ups draw the reference's tokens ------------------------------

@pytest.mark.parametrize("decimals", [1, 6], ids=["many-ties", "few-ties"])
def test_binary_search_finds_the_kth_largest(decimals):
    rng = np.random.RandomState(decimals)
    compiled = tf.function(fast.kth_largest, jit_compile=True)
    for k in [1, 2, 40, 299, 300]:
        logits = tf.constant(np.round(rng.randn(4, 300) * 3, decimals), tf.float32)
        want = tf.math.top_k(logits, k).values[:, -1:]
        np.testing.assert_array_equal(fast.kth_largest(logits, k), want)
        np.testing.assert_array_equal(compiled(logits, k), want)


def test_first_argmax_is_argmax_with_its_ties():
    rows = np.round(np.random.RandomState(0).randn(4, 500), 1).astype(np.float32)
    rows[0, [7, 300]] = 9.0  # two largest: the first wins
    rows[1] = LOW  # all equal
    rows[2, 499] = 9.0  # the last
    want = tf.argmax(rows, -1, output_type=tf.int32)
    np.testing.assert_array_equal(want, [7, 0, 499, np.argmax(rows[3])])
    np.testing.assert_array_equal(fast.first_argmax(rows), want)
    np.testing.assert_array_equal(tf.function(fast.first_argmax, jit_compile=True)(rows), want)


@pytest.mark.parametrize("xla", [True, False], ids=["xla", "no-xla"])
@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (1, 1.0), (3, 1.0), (40, 1.0), (0, 0.5), (40, 0.9)])
def test_fast_step_draws_the_reference_token(top_k, top_p, xla):
    # Logits rounded to bfloat16's 8 bits, as a bfloat16 model gives them: many ties at the k-th.
    logits = tf.cast(tf.cast(np.random.RandomState(top_k).randn(5, 1000) * 4, tf.bfloat16), tf.float32)
    if top_k == 40 and top_p == 1:
        kept = sample.top_k_logits(logits, top_k) > LOW
        assert (tf.reduce_sum(tf.cast(kept, tf.int32), -1) > top_k).numpy().any()  # ties kept
    keys = sample.sample_keys(3, 10, 5)
    step = tf.function(fast.next_token, jit_compile=xla, autograph=False)
    in_row_halves = tf.function(fast.next_token_in_row_halves, jit_compile=xla, autograph=False)  # rows 3 and 2
    for i in range(20):
        want = sample.next_token(logits, keys, i, 0.8, top_k, top_p)
        np.testing.assert_array_equal(step(logits, keys, tf.constant(i), 0.8, top_k, top_p, xla), want)  # traced once
        np.testing.assert_array_equal(in_row_halves(logits, keys, tf.constant(i), 0.8, top_k, top_p, xla), want)


def test_draw_among_the_kept_is_the_whole_vocabularys_draw():
    # Filtered as the filters leave logits: the removed ones float32's lowest, the kept ones 0 and below.
    rng = np.random.RandomState(7)
    logits = np.where(rng.rand(6, 1000) < 0.05, -np.abs(rng.randn(6, 1000)) * 3, LOW).astype(np.float32)
    logits[:, 0] = 0.0  # each row's largest
    logits[1] = np.where(np.arange(1000) < 500, LOW, logits[1])  # one row keeps a single token
    logits[1, 500] = 0.0
    keys = sample.sample_keys(11, 3, 6)
    draw = tf.function(fast.draw_kept, autograph=False)
    for i in range(10):
        np.testing.assert_array_equal(draw(logits, keys, i), sample.sample_logits(logits, keys, i))
    assert draw(logits, keys, 0)[1] == 500


def test_draw_among_the_kept_takes_the_first_of_equal_scores(monkeypatch):
    monkeypatch.setattr(sample, "gumbel", lambda state, index: tf.zeros(tf.shape(index), tf.float32))
    logits = np.full([3, 50], LOW, np.float32)
    logits[0, [4, 9, 30]] = 0.0  # three equal: the first wins, as tf.argmax's
    logits[1, [2, 40]] = [-1.0, 0.0]
    logits[2, 49] = 0.0
    np.testing.assert_array_equal(fast.draw_kept(tf.constant(logits), sample.sample_keys(0, 0, 3), 1), [4, 40, 49])


def test_fast_step_takes_its_filters_as_tensors():
    # As the exported model gives them: one trace for every setting, and the reference's token.
    logits = tf.constant(np.random.RandomState(2).randn(4, 2000).astype(np.float32) * 3)
    keys = sample.sample_keys(5, 0, 4)
    step = tf.function(fast.next_token, autograph=False)
    for top_k, top_p in [(0, 1.0), (40, 1.0), (0, 0.9), (40, 0.9)]:
        want = sample.next_token(logits, keys, 3, 1.1, top_k, top_p)
        got = step(logits, keys, tf.constant(3), tf.constant(1.1), tf.constant(top_k), tf.constant(top_p), False)
        np.testing.assert_array_equal(got, want)
    assert step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("rows", [1, 5])
def test_top_k_in_blocks_draws_the_reference_token(rows, monkeypatch):
    """`fast.draw_top_k`, top-k alone without XLA, over GPT-2's vocabulary (393 blocks, the last
    one short): each k up to the number of blocks draws the reference's token, with Python
    settings and with tensors; beyond it the filtered row does."""
    rng = np.random.RandomState(rows)
    logits = np.round(rng.randn(rows, 50257) * 3, 1).astype(np.float32)  # ties at the k-th
    logits[0, 128:256] = 20 + np.round(rng.randn(128), 1)  # row 0's 128 largest in one block
    logits[-1, -1] = 30.0  # the last row's largest in the short block
    logits = tf.constant(logits)
    assert fast.top_k_blocks(logits) == 393
    ks = []  # the k of each trace that took draw_top_k (one trace takes them as a tensor)
    in_blocks = fast.draw_top_k
    monkeypatch.setattr(fast, "draw_top_k", lambda logits, keys, step, k: (ks.append(k), in_blocks(
        logits, keys, step, k))[1])
    keys = sample.sample_keys(6, 2, rows)
    step = tf.function(fast.next_token, autograph=False)
    for k in [1, 2, 40, 393, 394]:
        for i in range(2):
            want = sample.next_token(logits, keys, i, 0.7, k, 1.0)
            np.testing.assert_array_equal(step(logits, keys, tf.constant(i), 0.7, k, 1.0, False), want)
            np.testing.assert_array_equal(
                step(logits, keys, tf.constant(i), tf.constant(0.7), tf.constant(k), tf.constant(1.0), False), want)
    assert [k for k in ks if not tf.is_tensor(k)] == [1, 2, 40, 393] and sum(map(tf.is_tensor, ks)) == 1

@pytest.mark.parametrize("xla", [True, False], ids=["xla", "no-xla"])
@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (0, 1e-6), (300, 0.95)])
def test_fast_top_p_draws_the_reference_token_for_small_and_large_nuclei(top_k, top_p, xla):
    # Whole vocabularies, a row with a nucleus of thousands beside spiky ones.
    scales = np.array([[6.0], [1.0], [6.0]], np.float32)
    logits = tf.constant(np.random.RandomState(5).randn(3, 50257).astype(np.float32) * scales)
    keys = sample.sample_keys(4, 0, 3)
    step = tf.function(fast.next_token, jit_compile=xla, autograph=False)
    for i in range(4):
        want = sample.next_token(logits, keys, i, 1.3, top_k, top_p)
        np.testing.assert_array_equal(step(logits, keys, tf.constant(i), 1.3, top_k, top_p, xla), want)


def nucleus_cases():
    """(name, logits [batch, n_vocab], p): spiky rows whose nucleus is among the largest, flat
    ones whose nucleus is thousands of tokens, ties at the threshold, p from tiny to almost 1."""
    rng = np.random.RandomState(0)
    vocab = lambda scale: rng.randn(4, 50257).astype(np.float32) * scale
    ties = np.repeat(np.array([[4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.0]], np.float32), 2, 0)  # mass 0.64 .. 0.85 in 1.0s
    yield "ties", np.pad(ties, [(0, 0), (0, 300)], constant_values=-30.0), [0.3, 0.7, 0.8]
    yield "bfloat16-ties", tf.cast(tf.cast(vocab(3), tf.bfloat16), tf.float32).numpy(), [0.5, 0.9, 0.95]
    yield "spiky", vocab(5), [1e-6, 0.5, 0.9, 0.99]
    yield "flat", vocab(1), [0.05, 0.9]
    yield "mixed-rows", np.stack([vocab(6)[0], vocab(0.5)[0]]), [0.9]
    yield "uniform", np.zeros([2, 50257], np.float32), [0.5, 1.0]


@pytest.mark.parametrize("xla", [True, False], ids=["xla", "no-xla"])
def test_fast_top_p_keeps_what_the_reference_keeps(xla):
    """Row by row, as the reference computes it with TensorFlow's kernels and with XLA: its
    cumulative sums in float64 agree whatever the order of summation or the exp."""
    fast_filter = tf.function(fast.top_p_logits, jit_compile=xla, autograph=False)
    compiled = tf.function(sample.top_p_logits, jit_compile=xla, autograph=False)
    for name, logits, ps in nucleus_cases():
        logits = tf.constant(logits)
        for p in ps:
            p = tf.constant(p, tf.float32)  # one trace for every p
            want = sample.top_p_logits(logits, p).numpy()
            np.testing.assert_array_equal(compiled(logits, p), want, err_msg=f"{name}, p {p}: XLA's reference")
            np.testing.assert_array_equal(fast_filter(logits, p), want, err_msg=f"{name}, p {p}")


def test_the_search_decides_small_and_large_nuclei_alike():
    """The nucleus of one token and of thousands found without the reference's sort, its
    threshold the smallest logit the reference keeps."""
    rng = np.random.RandomState(1)
    spiky, flat = (tf.constant(rng.randn(3, 50257).astype(np.float32) * scale) for scale in (5, 1))
    for logits, sizes in [(spiky, (1, 100)), (flat, (1000, 50257))]:
        threshold, decided = fast.top_p_threshold(logits, 0.9)
        assert decided.numpy().all()
        kept = sample.top_p_logits(logits, 0.9).numpy()
        np.testing.assert_array_equal(threshold[:, 0], np.where(kept > LOW, kept, np.inf).min(-1))
        assert ((kept > LOW).sum(-1) >= sizes[0]).all() and ((kept > LOW).sum(-1) < sizes[1]).all()


@pytest.mark.parametrize("xla", [True, False], ids=["xla", "no-xla"])
def test_a_cumulative_probability_at_p_is_left_to_the_reference(xla):
    """p at the reference's cumulative probability, or 1e-12 from it, where the order of
    summation could decide: the row is left to the reference, and both keep the same. 1e-6
    away, the search decides."""
    logits = tf.constant(np.random.RandomState(2).randn(2, 50257).astype(np.float32) * 2)
    reference = tf.function(sample.top_p_logits, jit_compile=xla, autograph=False)
    fast_filter = tf.function(fast.top_p_logits, jit_compile=xla, autograph=False)
    threshold = tf.function(fast.top_p_threshold, jit_compile=xla, autograph=False)
    weights, total = sample.softmax_weights(tf.sort(logits, direction="DESCENDING"))
    cumulative = np.cumsum(weights.numpy()[0]) / total.numpy()[0]  # float64, summed by numpy
    for at in cumulative[[0, 2, 500, 3000]]:
        for p, decides in [(at - 1e-12, False), (at, False), (at + 1e-12, False), (at - 1e-6, True), (at + 1e-6, True)]:
            p = tf.constant(p, tf.float64)
            assert threshold(logits, p)[1].numpy()[0] == decides
            np.testing.assert_array_equal(fast_filter(logits, p), reference(logits, p))


# --- decoding into the cache ------------------------------------------------------------------

@pytest.mark.parametrize("way", ["no-xla", "onednn", "einsum", "halves"])
def test_decode_fills_the_cache_in_steps_as_the_full_pass_does(models_dir, tiny_model, tiny, way):
    """And in `fast.cut_layer`'s halves, each group of heads its own cache."""
    hparams, params = tiny
    choices = {**WAYS, "einsum": EINSUM, "halves": ONEDNN}[way]
    groups = fast.head_groups(hparams.n_head) if way == "halves" else None
    weights = fast.column_halves(params, hparams.n_head) if groups else params
    tokens = random_tokens(hparams.n_vocab, 2, 20, seed=2)
    cache = fast.own_cache(fast.empty_cache(hparams, 2, 24, tf.float32, groups), choices)
    logits = []
    for start, end in [(0, 13), (13, 14), (14, 20)]:
        h, cache = fast.decode(weights, hparams, tokens[:, start:end], cache, start, choices)
        logits.append(model.model(params, hparams, tokens[:, :end])["logits"][:, start:end])
        zeros = tf.zeros([hparams.n_vocab]) if choices.fused_matmuls else None
        np.testing.assert_allclose(fast.last_logits(params, h, fast.transposed_wte(params), zeros), logits[-1][:, -1],
                                   atol=1e-5, rtol=0)
    np.testing.assert_allclose(tf.concat(logits, 1), reference_logits(os.path.join(models_dir, tiny_model), tokens),
                               atol=1e-4, rtol=0)
    present = model.model(params, hparams, tokens)["present"]  # [batch, layer, 2, heads, seq, head_dim]
    if groups:
        assert [[group.shape[2] for group in layer] for layer in cache] == [groups] * hparams.n_layer
        cache = [tf.concat(layer, axis=2) for layer in cache]  # the groups' heads side by side
    cache = tf.transpose(tf.stack(cache), [2, 0, 1, 3, 4, 5])  # [batch, layer, 2, heads, size, head_dim]
    np.testing.assert_allclose(cache[..., :20, :], present, atol=1e-5, rtol=0)
    assert not cache[..., 20:, :].numpy().any()


@pytest.mark.parametrize("position", [0, 6, 9])
def test_float32_attention_is_one_querys_attention(position):
    # A query at `position` over a cache of 10, the positions after it not yet written.
    rng = np.random.RandomState(position)
    q, k, v = [tf.constant(rng.randn(2, 3, n, 8).astype(np.float32)) for n in (1, 10, 10)]
    mask = tf.range(10)[None] <= position  # [1, 10]
    want = model.multihead_attn(q, k[:, :, :position + 1], v[:, :, :position + 1])
    np.testing.assert_allclose(fast.float32_attention(q, k, v, mask), want, atol=1e-6, rtol=0)
    assert [fast.cache_dtype_for(tf.bfloat16, batch, ONEDNN) for batch in (1, 2)] == [tf.float32, tf.bfloat16]


@pytest.mark.parametrize("cache_dtype", [tf.float32, tf.bfloat16])
def test_one_bfloat16_query_over_its_cache_writes_and_reads_c_attns_columns(tiny, cache_dtype):
    """`fast.attention` of the first position of bfloat16 h: c_attn's keys and values go to the
    cache at their rows (`cache_rows`) exactly as computed, in a float32 cache
    (`Choices.float32_attention`, one query on `float32_attention`) or a bfloat16 one (`attend`),
    and a query that sees one key gets its value, in h's dtype. (Positions after the first, and
    several at once: test_decode_fills_the_cache_in_steps_as_the_full_pass_does.)"""
    hparams, params = tiny
    p = model.cast_params(params, tf.bfloat16)["h"][0]["attn"]["c_attn"]
    h = tf.cast(np.random.RandomState(0).randn(2, 1, hparams.n_embd), tf.bfloat16)
    cache = fast.empty_cache(hparams, 2, 8, cache_dtype)[0]  # [2, batch, heads, size, head_dim]
    positions = tf.constant([0])
    mask = positions[:, None] >= tf.range(8)[None]  # [1, 8]
    a, cache = fast.attention(h, p, cache, fast.cache_rows(cache, positions), hparams.n_head, mask, ONEDNN)
    q, k, v = [model.split_heads(t, hparams.n_head) for t in tf.split(fast.conv1d(h, p, ONEDNN), 3, axis=-1)]
    assert (a.dtype, cache.dtype) == (tf.bfloat16, cache_dtype)
    np.testing.assert_array_equal(cache[:, :, :, :1], tf.cast(tf.stack([k, v]), cache_dtype))
    assert not cache[:, :, :, 1:].numpy().any()
    np.testing.assert_array_equal(a, v)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_a_layers_halves_compute_what_its_whole_matrices_do(tiny, dtype):
    """In `fast.cut_layer`'s halves, c_fc's column halves, c_attn's head halves (each the q, k
    and v of half the heads) and the unembedding's (n_vocab columns: odd) give the whole
    matrices' outputs to the bit, on oneDNN's fused kernels and on plain ones. Each c_proj's row
    halves, through the matching halves of its input and added, give the whole product to
    float32's rounding; in bfloat16 each half's product is rounded before they are added, one
    rounding more than the whole matrix takes: within the bound of the roundings both ways take."""
    hparams, params = tiny
    params = model.cast_params(params, dtype)
    split = fast.column_halves(params, hparams.n_head)
    layer, whole = split["h"][1], params["h"][1]
    head_dim = hparams.n_embd // hparams.n_head
    rounding = 2.0 ** -8 if dtype == tf.bfloat16 else 2.0 ** -24  # the unit roundoff of 8 or 24 significant bits
    exact = lambda t: tf.cast(t, tf.float64).numpy()
    assert [block["w"].shape[-1] for block in layer["mlp"]["c_fc"]] == [2 * hparams.n_embd] * 2
    for rows in (1, 3):
        x = tf.cast(np.random.RandomState(rows).randn(2, rows, hparams.n_embd), dtype)
        wide = tf.cast(np.random.RandomState(rows).randn(2, rows, 4 * hparams.n_embd), dtype)  # c_fc's output
        for choices in (fast.Choices(), ONEDNN, EINSUM):
            np.testing.assert_array_equal(fast.conv1d(x, layer["mlp"]["c_fc"], choices, gelu=True),
                                          fast.conv1d(x, whole["mlp"]["c_fc"], choices, gelu=True))
            q_k_v = tf.split(fast.conv1d(x, whole["attn"]["c_attn"], choices), 3, axis=-1)
            heads = [model.split_heads(t, hparams.n_head) for t in q_k_v]  # each [batch, heads, seq, head_dim]
            for group, block, first in zip(fast.head_groups(hparams.n_head), layer["attn"]["c_attn"],
                                           np.cumsum([0] + fast.head_groups(hparams.n_head))):
                got = [model.split_heads(t, group) for t in tf.split(fast.conv1d(x, block, choices), 3, axis=-1)]
                for got_t, want_t in zip(got, heads):
                    np.testing.assert_array_equal(got_t, want_t[:, first:first + group])
            for part, widths, h in (("attn", [group * head_dim for group in fast.head_groups(hparams.n_head)], x),
                                    ("mlp", [2 * hparams.n_embd] * 2, wide)):
                blocks = layer[part]["c_proj"]
                assert [block["w"].shape.as_list() for block in blocks] == [[n, hparams.n_embd] for n in widths]
                products = [fast.conv1d(part_h, block, choices) for part_h, block in zip(tf.split(h, widths, -1), blocks)]
                got, want = tf.add_n(products), fast.conv1d(h, whole[part]["c_proj"], choices)
                # Both sum nx products in float32 (Higham's bound for a sum of n terms, n * u),
                # then round: the plain and einsum ways each product before its bias is added
                # (at most |h| @ |w| for the halves together, and for the whole), then each with
                # its bias, then the halves' sum. The bound of those errors.
                w, b = exact(whole[part]["c_proj"]["w"]), exact(whole[part]["c_proj"]["b"])
                magnitude = np.abs(exact(h)) @ np.abs(w)
                sums = 2 * w.shape[0] * 2.0 ** -24 * (magnitude + np.abs(b))
                roundings = rounding * (2 * magnitude + sum(np.abs(exact(t)) for t in [*products, got, want]))
                assert (np.abs(exact(got) - exact(want)) <= sums + roundings).all()
        wte_t, zeros = fast.transposed_wte(params), tf.zeros([hparams.n_vocab], dtype)
        assert [block.shape[-1] for block in fast.halves(wte_t)] == [25129, 25128]
        np.testing.assert_array_equal(fast.last_logits(params, x, fast.halves(wte_t), fast.halves(zeros)),
                                      fast.last_logits(params, x, wte_t, zeros))


def test_head_halves_are_the_q_k_and_v_of_each_group_of_heads():
    columns = tf.range(3 * 5 * 2)[None]  # c_attn's [1, 3 * n_embd] for 5 heads of 2: q, k, v
    assert fast.head_groups(5) == [3, 2]
    first, second = fast.head_halves(columns, 5)
    np.testing.assert_array_equal(first[0], [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 25])
    np.testing.assert_array_equal(second[0], [6, 7, 8, 9, 16, 17, 18, 19, 26, 27, 28, 29])


@pytest.mark.parametrize("n_head", [3, 1])
def test_column_halves_of_an_odd_number_of_heads_or_one_sample_the_plain_models_tokens(tmp_path, n_head):
    """Heads in two groups of 2 and 1 (1558M's 25: 13 and 12); a single head leaves c_attn whole."""
    hparams = dict(checkpoints.TINY, n_vocab=500, n_embd=6 * n_head, n_head=n_head)
    hparams, params = load(checkpoints.write_checkpoint(str(tmp_path / "heads"), hparams))
    sampler = fast.Sampler(params, hparams, top_k=40, choices=ONEDNN)
    assert isinstance(fast.unstack_layers(sampler._params)["h"][0]["attn"]["c_attn"], list) == (n_head > 1)
    context = random_tokens(hparams.n_vocab, 2, 5, seed=n_head)
    np.testing.assert_array_equal(sampler.sample(context, 12, seed=1),
                                  sample.sample_plain(params, hparams, context, 12, top_k=40, seed=1))


def test_the_sampling_step_is_in_row_halves_for_2_to_8_rows(tiny, monkeypatch):
    hparams, params = tiny
    rows_seen = []  # the batch of each trace that took row halves
    in_row_halves = fast.next_token_in_row_halves
    monkeypatch.setattr(fast, "next_token_in_row_halves",
                        lambda logits, *args: (rows_seen.append(logits.shape[0]), in_row_halves(logits, *args))[1])
    sampler = fast.Sampler(params, hparams, top_k=40, choices=ONEDNN)
    for rows in (1, 3, 9):
        sampler.sample(random_tokens(hparams.n_vocab, rows, 4), 2, seed=1)
    assert rows_seen == [3]


def test_column_halves_sample_the_tokens_of_whole_matrices(tiny):
    """A Sampler with `Choices.column_halves` reads its tensor weights in halves, and samples
    the tokens of whole matrices and model.py's in float32, one row or several; weights that
    can change it reads whole. (In bfloat16 the halves add their products rounded, so their
    tokens are held to model.py's within bfloat16's rounding: tests/test_dtypes.py.)"""
    hparams, params = tiny
    halved = lambda sampler: isinstance(fast.unstack_layers(sampler._params)["h"][0]["mlp"]["c_fc"], list)
    for choices in (ONEDNN, fast.Choices(column_halves=True)):  # oneDNN's fused kernels, and plain ones
        halves = fast.Sampler(params, hparams, top_k=40, choices=choices)
        whole = fast.Sampler(params, hparams, top_k=40, choices=dataclasses.replace(choices, column_halves=False))
        assert halved(halves) and not halved(whole)
        for rows in (1, 3):
            context = random_tokens(hparams.n_vocab, rows, 6, seed=rows)
            got = halves.sample(context, 40, seed=3)
            np.testing.assert_array_equal(got, whole.sample(context, 40, seed=3))
            np.testing.assert_array_equal(got, sample.sample_plain(params, hparams, context, 40, top_k=40, seed=3))
    assert not halved(fast.Sampler(tf.nest.map_structure(tf.Variable, params), hparams, choices=ONEDNN))


def test_stacked_layers_unstack_to_the_weights_they_were_made_of(tiny):
    """`fast.stack_layers` makes each weight of every layer one stack [n_layer, ...], of whole
    matrices or of `fast.cut_layer`'s halves, and empties the list it is given;
    `fast.unstack_layers` gives back the layers as `decode` reads them: the weights themselves,
    or `fast.column_halves`'."""
    hparams, params = tiny
    for want in (params, fast.column_halves(params, hparams.n_head)):
        layers = list(want["h"])
        stacked = dict(params, h=fast.stack_layers(layers))
        assert layers == []
        assert {t.shape[0] for t in tf.nest.flatten(stacked["h"])} == {hparams.n_layer}
        got = fast.unstack_layers(stacked)
        tf.nest.assert_same_structure(got, want)
        for got_t, want_t in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
            np.testing.assert_array_equal(got_t, want_t)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
@pytest.mark.parametrize("choices", [ONEDNN, dataclasses.replace(ONEDNN, column_halves=False),
                                     dataclasses.replace(ONEDNN, stacked_layers=False), fast.LEAN],
                         ids=["stacked_halves", "stacked_whole", "halves", "lean"])
def test_weights_loaded_for_a_sampler_are_the_ones_it_lays_out_itself(models_dir, tiny_model, dtype, choices,
                                                                      monkeypatch):
    """`fast.load_params(..., choices)`, as the scripts load, gives the weights laid out as a
    Sampler with those choices keeps them (`fast.sampling_params`), read a layer at a time (a
    tiny READ_BYTES): the same tensors to the bit, the same structure, and a Sampler given them
    keeps them as they are and samples the tokens of one given the whole weights."""
    monkeypatch.setattr(fast, "READ_BYTES", 1)  # one layer a read: each cut before the next is read
    path = os.path.join(models_dir, tiny_model)
    hparams, prefix = model.load_hparams(path), model.find_checkpoint(path)
    whole = fast.load_params(prefix, hparams, dtype)
    laid_out = fast.load_params(prefix, hparams, dtype, choices)
    want = fast.sampling_params(whole, hparams.n_head, choices)
    tf.nest.assert_same_structure(laid_out, want)
    for got_t, want_t in zip(tf.nest.flatten(laid_out), tf.nest.flatten(want)):
        assert got_t.dtype == want_t.dtype
        np.testing.assert_array_equal(got_t, want_t)
    assert isinstance(laid_out["h"], list) != choices.stacked_layers
    sampler = fast.Sampler(laid_out, hparams, top_k=40, choices=choices)
    if choices.stacked_layers:
        assert all(kept is given for kept, given in zip(tf.nest.flatten(sampler._params), tf.nest.flatten(laid_out)))
    context = random_tokens(hparams.n_vocab, 2, 5)
    np.testing.assert_array_equal(sampler.sample(context, 10, seed=4),
                                  fast.Sampler(whole, hparams, top_k=40, choices=choices).sample(context, 10, seed=4))


def test_weights_laid_out_for_other_choices_are_one_clear_error(tiny):
    hparams, params = tiny
    stacked_halves = fast.sampling_params(params, hparams.n_head, ONEDNN)
    with pytest.raises(ValueError, match="laid out for other choices"):
        fast.Sampler(stacked_halves, hparams, choices=dataclasses.replace(ONEDNN, column_halves=False))


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_stacked_layers_sample_the_tokens_of_the_layers_as_they_are(tiny, dtype):
    """A Sampler with `Choices.stacked_layers` keeps its tensor weights stacked (in halves or
    whole), which the prompt's pass and each step of the decode loop unstack, and samples the
    tokens of the layers as they are, one row or several; weights that can change it reads as
    they are."""
    hparams, params = tiny
    params = model.cast_params(params, dtype)
    for in_halves in (True, False):
        choices = dataclasses.replace(ONEDNN, column_halves=in_halves)
        stacked = fast.Sampler(params, hparams, top_k=40, choices=choices)
        layers = fast.Sampler(params, hparams, top_k=40, choices=dataclasses.replace(choices, stacked_layers=False))
        assert isinstance(stacked._params["h"], dict) and isinstance(layers._params["h"], list)
        for rows in (1, 3):
            context = random_tokens(hparams.n_vocab, rows, 6, seed=rows)
            np.testing.assert_array_equal(stacked.sample(context, 30, seed=3), layers.sample(context, 30, seed=3))
    variables = tf.nest.map_structure(tf.Variable, params)
    assert isinstance(fast.Sampler(variables, hparams, choices=ONEDNN)._params["h"], list)


# --- the sampler ------------------------------------------------------------------------------

def test_top_k_1_is_the_plain_models_argmax(tiny):
    hparams, params = tiny
    tokens = random_tokens(hparams.n_vocab, 2, 5)
    out = fast.Sampler(params, hparams, top_k=1).sample(tokens, 12, seed=5)
    for _ in range(12):
        logits = model.model(params, hparams, tokens)["logits"][:, -1]
        tokens = np.concatenate([tokens, np.argmax(logits, -1)[:, None].astype(np.int32)], 1)
    np.testing.assert_array_equal(out, tokens)


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("top_k, top_p, temperature", [(0, 1.0, 1.0), (40, 1.0, 0.7), (0, 0.9, 1.3), (10, 0.8, 1.0)])
def test_cached_sampler_equals_plain_path(tiny, top_k, top_p, temperature, way):
    hparams, params = tiny
    context = random_tokens(hparams.n_vocab, 3, 6, seed=top_k)
    kwargs = dict(temperature=temperature, seed=11, first_sample=2)
    got = fast.Sampler(params, hparams, top_k=top_k, top_p=top_p, choices=WAYS[way]).sample(context, 16, **kwargs)
    plain = sample.sample_plain(params, hparams, context, 16, top_k=top_k, top_p=top_p, **kwargs)
    np.testing.assert_array_equal(got, plain)


def test_one_token_prompt_and_the_whole_window(tiny):
    hparams, params = tiny
    sampler = fast.Sampler(params, hparams, top_k=5)
    for n, length in [(1, 64), (63, 2), (64, 1)]:
        context = random_tokens(hparams.n_vocab, 1, n, seed=n)
        plain = sample.sample_plain(params, hparams, context, length, top_k=5, seed=1)
        np.testing.assert_array_equal(sampler.sample(context, length, seed=1), plain)


def test_ith_sample_is_the_same_whatever_the_batch(tiny):
    hparams, params = tiny
    sampler = fast.Sampler(params, hparams, top_p=0.9)
    context = random_tokens(hparams.n_vocab, 1, 4)
    together = sampler.sample(np.repeat(context, 4, 0), 10, seed=3)
    pairs = np.concatenate([sampler.sample(np.repeat(context, 2, 0), 10, seed=3, first_sample=i) for i in (0, 2)])
    alone = np.concatenate([sampler.sample(context, 10, seed=3, first_sample=i) for i in range(4)])
    np.testing.assert_array_equal(together, pairs)
    np.testing.assert_array_equal(together, alone)
    assert len({tuple(row) for row in together}) == 4  # different samples, not one repeated


def test_seed_decides_the_samples(tiny):
    hparams, params = tiny
    context = random_tokens(hparams.n_vocab, 2, 3)
    a = fast.Sampler(params, hparams).sample(context, 10, seed=1)
    b = fast.Sampler(params, hparams).sample(context, 10, seed=1)
    c = fast.Sampler(params, hparams).sample(context, 10, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


@pytest.mark.parametrize("jit", [True, False], ids=["xla", "no-xla"])
def test_streamed_chunks_equal_one_call(tiny, jit):
    hparams, params = tiny
    sampler = fast.Sampler(params, hparams, top_k=20, jit=jit)
    context = random_tokens(hparams.n_vocab, 2, 5)
    chunks = list(sampler.generate(context, 11, seed=4, chunk=3))
    assert [c.shape for c in chunks] == [(2, 3)] * 3 + [(2, 2)]
    np.testing.assert_array_equal(np.concatenate([context] + chunks, 1), sampler.sample(context, 11, seed=4))


def test_end_token_ends_each_sample(tiny):
    hparams, params = tiny
    context = random_tokens(hparams.n_vocab, 3, 2)
    free = fast.Sampler(params, hparams).sample(context, 12, seed=9)
    end = int(free[0, 2 + 4])  # row 0's fifth new token
    stopped = fast.Sampler(params, hparams, end_token=end).sample(context, 12, seed=9)
    for row_free, row_stopped in zip(free, stopped):
        hits = np.flatnonzero(row_free[2:] == end)
        cut = 2 + (hits[0] + 1 if len(hits) else 12)
        np.testing.assert_array_equal(row_stopped[:cut], row_free[:cut])
        assert (row_stopped[cut:] == end).all()
    assert (stopped[0, 7:] == end).all()


def ragged_prompts(hparams):
    return [list(row[:n]) for row, n in zip(random_tokens(hparams.n_vocab, 4, 9, seed=7), [3, 9, 1, 5])]


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("top_k", [1, 0], ids=["greedy", "sampled"])
def test_each_ragged_row_is_its_prompt_alone(tiny, top_k, way):
    hparams, params = tiny
    sampler = fast.Sampler(params, hparams, top_k=top_k, choices=WAYS[way])
    prompts = ragged_prompts(hparams)
    got = sampler.sample(prompts, 10, seed=6, first_sample=1)
    for i, prompt in enumerate(prompts):
        np.testing.assert_array_equal(got[i], sampler.sample([prompt], 10, seed=6, first_sample=1 + i)[0])
    chunks = list(sampler.generate(prompts, 10, seed=6, first_sample=1, chunk=4))
    assert [c.shape for c in chunks] == [(4, 4), (4, 4), (4, 2)]
    np.testing.assert_array_equal(np.concatenate(chunks, 1), [row[len(p):] for row, p in zip(got, prompts)])


def test_ragged_rows_end_at_their_own_end_token(tiny):
    hparams, params = tiny
    prompts = ragged_prompts(hparams)
    free = fast.Sampler(params, hparams).sample(prompts, 12, seed=9)
    end = int(free[1][9 + 3])  # row 1's fourth new token
    prompts[0][1] = end  # an end_token inside a prompt ends nothing
    sampler = fast.Sampler(params, hparams, end_token=end)
    stopped = sampler.sample(prompts, 12, seed=9)
    for i, prompt in enumerate(prompts):
        np.testing.assert_array_equal(stopped[i], sampler.sample([prompt], 12, seed=9, first_sample=i)[0])
    assert (stopped[1][9 + 3:] == end).all()


@pytest.mark.parametrize("chunk", [None, 5])
def test_a_growing_cache_gives_the_tokens_of_a_cache_sized_for_the_sample(tiny, chunk, monkeypatch):
    """The cache grows by fast.GROWTH positions, within a call's steps and between chunks, up to
    the whole window: rows of any prompt length, and rows that end early, get the tokens of a
    cache sized for the whole sample, and model.py's."""
    hparams, params = tiny
    sizes = []  # the cache's size at each call of the decode loop
    decode = fast.Sampler._decode
    monkeypatch.setattr(fast.Sampler, "_decode", lambda self, cache, *args: (
        sizes.append(fast.cache_tensor(cache).shape[3]), decode(self, cache, *args))[1])

    def new_tokens(prompts, length, grow, end_token=None, first_sample=0):
        """The new tokens, `chunk` at a time, and the cache sizes the decode loop saw."""
        choices = dataclasses.replace(ONEDNN, growing_cache=grow)
        sampler = fast.Sampler(params, hparams, top_k=10, end_token=end_token, choices=choices)
        sizes.clear()
        chunks = sampler.generate(prompts, length, seed=5, first_sample=first_sample, chunk=chunk)
        return np.concatenate(list(chunks), 1), sorted(set(sizes))

    one = random_tokens(hparams.n_vocab, 2, 1, seed=3)
    got, seen = new_tokens(one, 63, grow=True)  # positions 0 to 63: the whole window
    assert seen == [32, 64]
    np.testing.assert_array_equal(got, sample.sample_plain(params, hparams, one, 63, top_k=10, seed=5)[:, 1:])

    prompts = ragged_prompts(hparams)  # 3, 9, 1 and 5 tokens
    got, seen = new_tokens(prompts, 50, grow=True)
    assert seen == [32, 64]
    np.testing.assert_array_equal(got, new_tokens(prompts, 50, grow=False)[0])
    # An end_token row 2 (one token of prompt) first draws at position 36 or later.
    end = next(token for i, token in enumerate(got[2]) if i >= 35 and token not in got[2, :i])
    ends = list(got[2]).index(end) + 1  # row 2's new tokens up to its end_token
    for rows, first in ((prompts, 0), (prompts[2:3], 2)):  # row 2 ends; row 2 alone ends, and the sample
        stopped, seen = new_tokens(rows, 50, grow=True, end_token=end, first_sample=first)
        assert seen == [32, 64]
        np.testing.assert_array_equal(stopped, new_tokens(rows, 50, grow=False, end_token=end, first_sample=first)[0])
        row = stopped[2 - first]
        np.testing.assert_array_equal(row[:ends], got[2, :ends])
        assert (row[ends:] == end).all()
    assert stopped.shape[1] < 50


def test_sampler_is_traced_once_for_each_batch_size_and_every_length(tiny):
    hparams, params = tiny
    sampler = fast.Sampler(params, hparams, top_k=3)
    runs = [(1, 1, 5, 0), (2, 9, 3, 1), (2, 30, 20, 2), (1, 64, 1, 3), (1, 2, 63, 4), (2, 5, 50, 5), (3, 7, 9, 6)]
    for batch, n, length, seed in runs:
        assert sampler.sample(random_tokens(hparams.n_vocab, batch, n), length, seed=seed).shape == (batch, n + length)
    assert [prefill.experimental_get_tracing_count() for prefill in sampler._prefills.values()] == [1]
    assert {batch: decoder.experimental_get_tracing_count() for batch, decoder in sampler._decoders.items()} == {
        1: 1, 2: 1, 3: 1}


def test_a_sampler_counts_the_tokens_and_seconds_of_the_calls_that_compile(tiny):
    """The first call of a batch size compiles; a second one of the same shape does not, and one
    of a new batch size does."""
    hparams, params = tiny
    sampler = fast.Sampler(params, hparams, top_k=3)
    sampler.sample(np.zeros([1, 3], np.int32), 5)
    first = sampler.compiling_seconds
    assert (sampler.tokens_generated, sampler.compiling_tokens) == (5, 5) and first > 0
    sampler.sample(np.zeros([1, 3], np.int32), 5)
    assert (sampler.tokens_generated, sampler.compiling_tokens, sampler.compiling_seconds) == (10, 5, first)
    list(sampler.generate(np.zeros([2, 3], np.int32), 4, chunk=1))  # the first call is the first token's
    assert (sampler.tokens_generated, sampler.compiling_tokens) == (18, 7) and sampler.compiling_seconds > first


def test_the_prompts_pass_keeps_no_converted_weights_where_the_decode_loop_does(monkeypatch):
    """Where fused kernels keep their weights converted, the prompt's pass takes einsums, which
    keep none; elsewhere, and under XLA or on plain kernels, the decode loop's choices."""
    monkeypatch.delenv(fast.FROZEN_WEIGHTS, raising=False)
    assert fast.prompt_choices(ONEDNN) == ONEDNN
    monkeypatch.setenv(fast.FROZEN_WEIGHTS, "1")
    assert fast.prompt_choices(ONEDNN) == EINSUM
    for choices in (fast.Choices(xla=True), fast.Choices()):
        assert fast.prompt_choices(choices) == choices


def test_a_prompts_pass_on_einsums_gives_the_plain_models_tokens(tiny, monkeypatch):
    """oneDNN's way as the scripts run it, the prompt's pass on einsums (with frozen weights,
    which the decode loop's fused kernels keep) and the decode loop on fused kernels: model.py's
    tokens, for prompts of one length and of several."""
    monkeypatch.setattr(fast, "weights_frozen", lambda: True)
    hparams, params = tiny
    sampler = fast.Sampler(params, hparams, top_k=40, choices=ONEDNN)
    context = random_tokens(hparams.n_vocab, 3, 6, seed=4)
    np.testing.assert_array_equal(sampler.sample(context, 12, seed=8),
                                  sample.sample_plain(params, hparams, context, 12, top_k=40, seed=8))
    prompts = ragged_prompts(hparams)
    for i, (row, prompt) in enumerate(zip(sampler.sample(prompts, 8, seed=8), prompts)):  # row i: sample i
        plain = sample.sample_plain(params, hparams, [prompt], 8, top_k=40, seed=8, first_sample=i)
        np.testing.assert_array_equal(row, plain[0])


@pytest.mark.parametrize("bfloat16_instructions", [True, False])
def test_choices_follow_the_device_and_dtype(monkeypatch, bfloat16_instructions):
    monkeypatch.setattr(fast, "has_bfloat16_instructions", lambda: bfloat16_instructions)
    assert fast.choices_for(tf.float16, "CPU") == fast.Choices(xla=True)
    native = fast.Choices(fused_matmuls=True, inplace_cache=True, frozen_weights=True, float32_attention=True,
                          single_threaded_ops=True, growing_cache=True, column_halves=True, sampling_row_halves=True,
                          stacked_layers=True)
    # oneDNN's kernels where they beat XLA's (bench/README.md): bfloat16's at any batch, float32's
    # at 4 rows or more, where the rows are known.
    onednn = native if bfloat16_instructions else fast.Choices(xla=True)
    rows = (None, 1, 3, 4, 8)
    assert [fast.choices_for(tf.bfloat16, "CPU", n) for n in rows] == [onednn] * 5
    assert [fast.choices_for(tf.float32, "CPU", n) for n in rows] == [fast.Choices(xla=True)] * 3 + [onednn] * 2
    for dtype in (tf.float32, tf.bfloat16):
        assert fast.choices_for(dtype, "GPU") == fast.Choices()  # no CPU choice imposed on a GPU
    # Training: XLA in half precision where the decode loop takes it.
    assert fast.train_with_xla(tf.bfloat16, "CPU") == (not bfloat16_instructions)
    assert not fast.train_with_xla(tf.float32, "CPU")


def test_bfloat16_instructions_are_read_from_the_cpus_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    flags = "fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert fast.cpu_flags(str(cpuinfo)) == set(flags.split())
    assert fast.BFLOAT16_FLAGS & fast.cpu_flags(str(cpuinfo)) == {"avx512_bf16"}
    assert fast.cpu_flags(str(tmp_path / "missing")) == set()  # a system that does not say: no flags


# --- weights that change ------------------------------------------------------------------------

CHANGED_WEIGHTS_RUN = """
import json, sys
import compile_cache
compile_cache.start()  # the two runs compile the same programs: the later one loads them
import numpy as np, tensorflow as tf
import cli, fast

fast.has_bfloat16_instructions = lambda: False  # the same on every CPU: nothing tells oneDNN weights are frozen
models_dir, first, second = sys.argv[1:]
context = np.random.RandomState(1).randint(0, 50257, (2, 5))

def tokens(params, hparams):
    return fast.Sampler(params, hparams, top_k=40).sample(context, 12, seed=3).tolist()

runs = {}
for dtype in ("float32", "bfloat16", "float16"):
    _, hparams, a = cli.load(first, models_dir, dtype)  # as the scripts load
    _, _, b = cli.load(second, models_dir, dtype)
    out = runs[dtype] = {"a": tokens(a, hparams), "b_after_a": tokens(b, hparams)}
    weights = tf.nest.map_structure(tf.Variable, a)
    sampler = fast.Sampler(weights, hparams, top_k=40)
    out["variables_a"] = sampler.sample(context, 12, seed=3).tolist()
    tf.nest.map_structure(lambda w, new: w.assign(new), weights, b)
    out["variables_b"] = sampler.sample(context, 12, seed=3).tolist()
    # The hazard itself, where oneDNN runs this dtype's matmuls: a fused matmul-plus-bias whose
    # weights change would be stale if the scripts' loading had told oneDNN weights never change.
    fused = tf.function(lambda x, w, b: tf.nn.bias_add(tf.matmul(x, w), b))
    x, bias = tf.ones([1, 64], dtype), tf.zeros([64], dtype)
    out["stale"] = bool(fused(x, tf.ones([64, 64], dtype), bias)[0, 0] == fused(x, 2 * tf.ones([64, 64], dtype), bias)[0, 0])
print(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def second_tiny(models_dir, vocab_dir):
    """The tiny model's shape with other random weights."""
    if not os.path.isdir(os.path.join(models_dir, "tiny-other")):
        checkpoints.write_checkpoint(os.path.join(models_dir, "tiny-other"), checkpoints.TINY, vocab_dir, seed=1)
    return "tiny-other"


def start_changed_weights(models_dir, first, second):
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop(fast.FROZEN_WEIGHTS, None)  # the environment the scripts start in
    return subprocess.Popen([sys.executable, "-c", CHANGED_WEIGHTS_RUN, models_dir, first, second],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def changed_weights_result(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return json.loads(out.splitlines()[-1])


@pytest.fixture(scope="module")
def changed_weights(models_dir, tiny_model, second_tiny):
    """The runs of CHANGED_WEIGHTS_RUN, two processes at once: one model then the other, and the
    other first."""
    runs = [start_changed_weights(models_dir, tiny_model, second_tiny),
            start_changed_weights(models_dir, second_tiny, tiny_model)]
    return [changed_weights_result(process) for process in runs]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_new_weights_give_the_new_models_tokens(changed_weights, dtype):
    """Weights changed between two samples, as tensors (a new Sampler) and as tf.Variables (the
    same Sampler), loaded as the scripts load them: each sample is the one its own weights give
    in a process that never saw the others."""
    run, alone = (run[dtype] for run in changed_weights)
    assert run["a"] != run["b_after_a"]  # the two models differ, so a stale one would show
    assert run["b_after_a"] == alone["a"] and run["a"] == alone["b_after_a"]
    assert run["variables_a"] == run["a"] and run["variables_b"] == run["b_after_a"]
    assert not run["stale"]


FROZEN_WEIGHTS_RUN = """
import json, sys
import numpy as np, tensorflow as tf
import cli, fast, model

fast.has_bfloat16_instructions = lambda: True  # the same on every CPU (oneDNN emulates the instructions where missing)
models_dir, first, second = sys.argv[1:]
context = np.random.RandomState(1).randint(0, 50257, (2, 5))
runs = {}
for dtype in ("bfloat16", "float32"):
    out = runs[dtype] = {}
    choices = fast.choices_for(tf.as_dtype(dtype), rows=fast.FLOAT32_ONEDNN_ROWS)  # oneDNN's, for float32 too
    out["choices"] = choices == fast.ONEDNN
    for name in (first, second, first):  # as the scripts load, the weights in turn
        _, hparams, params = cli.load(name, models_dir, dtype, sampling=(fast.FLOAT32_ONEDNN_ROWS, choices))
        out.setdefault("intra_op_threads", tf.config.threading.get_intra_op_parallelism_threads())
        sampler = fast.Sampler(params, hparams, top_k=1, choices=choices)
        whole = cli.load(name, models_dir, dtype)[2]  # not laid out for the Sampler: as model.py reads them
        for rows in (context, context[:1]):  # two rows and one: decode loops of their own
            tokens = sampler.sample(rows, 12)
            logits = model.model(whole, hparams, tokens[:, :-1])["logits"][:, 4:].numpy()  # the plain model's, each step
            chosen = np.take_along_axis(logits, tokens[:, 5:, None], -1)[..., 0]
            out.setdefault("gaps", []).append(float((logits.max(-1) - chosen).max()))
            out.setdefault("tokens", []).append(tokens.tolist())
    out["environment"] = fast.os.environ.get(fast.FROZEN_WEIGHTS)
    try:
        fast.Sampler(tf.nest.map_structure(tf.Variable, params), hparams)
    except ValueError as e:
        out["variables"] = str(e)
    fused = tf.function(lambda x, w, b: tf.nn.bias_add(tf.matmul(x, w), b))
    x, bias = tf.ones([1, 64], dtype), tf.zeros([64], dtype)
    out["stale"] = bool(fused(x, tf.ones([64, 64], dtype), bias)[0, 0] == fused(x, 2 * tf.ones([64, 64], dtype), bias)[0, 0])
print(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def frozen_weights_runs(models_dir, tiny_model, second_tiny):
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": "", "TF_ENABLE_ONEDNN_OPTS": "1"}  # a CPU, oneDNN on, wherever the test runs
    env.pop(fast.FROZEN_WEIGHTS, None)
    out = subprocess.run([sys.executable, "-c", FROZEN_WEIGHTS_RUN, models_dir, tiny_model, second_tiny],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("dtype, gap", [("bfloat16", 0.25), ("float32", 1e-4)])  # bfloat16's: test_dtypes.TOLERANCE
def test_frozen_weights_serve_each_model_and_layer_its_own(frozen_weights_runs, dtype, gap):
    """bfloat16 and float32 loaded as the scripts load them on a CPU with bfloat16 instructions:
    oneDNN is told the weights never change, and keeps each fused matmul's weights converted.
    Two models in turn, whose layers share one traced block, each sample greedily by its own
    weights (each token the plain model's top choice, up to the dtype's rounding); weights that
    can change are refused; and the hazard is real there: one fused kernel given new weights
    keeps the old."""
    run = frozen_weights_runs[dtype]
    assert run["choices"] and run["environment"] == "1" and run["intra_op_threads"] == 1  # 4 rows: an op a thread
    first, first_row, second, second_row, first_again, first_row_again = run["tokens"]
    assert first != second and first_again == first
    assert first_row != second_row and first_row_again == first_row
    assert max(run["gaps"]) <= gap
    assert "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is set" in run["variables"]
    assert run["stale"]


SET_THREADS_RUN = """
import json
import tensorflow as tf
import fast

seen = []
for choices, batch_size in ((fast.LEAN, 1), (fast.ONEDNN, 9), (fast.ONEDNN, 8), (fast.ONEDNN, 1)):
    fast.set_threads(choices, batch_size)
    seen.append(tf.config.threading.get_intra_op_parallelism_threads())
tf.constant(1.0) + 1  # TensorFlow's runtime starts: its threads are set
fast.set_threads(fast.ONEDNN, 1)
print(json.dumps(seen))
"""


@pytest.mark.parametrize("environment, threads", [({}, [0, 0, 1, 1]),
                                                  ({"TF_NUM_INTRAOP_THREADS": "2"}, [0, 0, 0, 0])])
def test_one_thread_an_op_only_for_up_to_8_rows_on_onednn_and_only_before_the_runtime_starts(environment, threads):
    """`set_threads` in a fresh process: XLA's choices and batch 9 keep TensorFlow's threads
    (0: its default), oneDNN's at batch 8 or 1 take one thread an op unless
    TF_NUM_INTRAOP_THREADS says otherwise, and once the runtime runs it changes nothing and
    raises nothing."""
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src"), "TF_CPP_MIN_LOG_LEVEL": "3", **environment}
    if not environment:
        env.pop("TF_NUM_INTRAOP_THREADS", None)
    out = subprocess.run([sys.executable, "-c", SET_THREADS_RUN], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == threads


def test_variables_are_refused_where_onednn_is_told_weights_never_change(tiny, monkeypatch):
    """An environment with TF_ONEDNN_ASSUME_FROZEN_WEIGHTS set: weights that can change are
    refused, for sampling and for training; tensors, which cannot, are not."""
    hparams, params = tiny
    monkeypatch.setenv(fast.FROZEN_WEIGHTS, "1")
    fast.Sampler(params, hparams)
    with pytest.raises(ValueError, match="tf.Variables.*TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is set.*unset it"):
        fast.Sampler(tf.nest.map_structure(tf.Variable, params), hparams)
    values = {name: np.asarray(value) for name, value in model.checkpoint_values(params).items()}
    with pytest.raises(ValueError, match="TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is set"):
        training.Trainer(values, hparams)


def test_nan_logits_are_said_not_drawn_as_ids(tiny):
    """A model whose logits are NaN (weights that hold NaN) draws no token: XLA's argmax gives
    an id past the vocabulary, which the Sampler turns into one line saying why."""
    hparams, params = tiny
    params = dict(params, ln_f=dict(params["ln_f"], g=params["ln_f"]["g"] * np.nan))
    with pytest.raises(ValueError, match="the model's logits are NaN, so no token could be drawn"):
        fast.Sampler(params, hparams, jit=True).sample(np.zeros([2, 3], np.int32), 2)
