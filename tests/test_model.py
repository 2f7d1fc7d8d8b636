"""model.py: hparams, the checkpoint loader's checks, and logits equal to the NumPy reference."""
import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

import checkpoints
import fast
import model
import saving
from helpers import load, random_tokens, reference_logits


# --- hparams --------------------------------------------------------------------------------

def test_default_hparams_are_the_originals():
    assert dataclasses.asdict(model.default_hparams()) == dict(n_vocab=0, n_ctx=1024, n_embd=768, n_head=12, n_layer=12)


def test_override_changes_the_hparams_as_the_originals_did():
    """The original scripts' idiom: `hparams = model.default_hparams()` then
    `hparams.override_from_dict(json.load(f))`, result unused."""
    hparams = model.default_hparams()
    returned = hparams.override_from_dict({"n_vocab": 50257, "n_head": 25, "n_embd": 1600})
    assert returned is hparams
    assert (hparams.n_vocab, hparams.n_head, hparams.head_dim, hparams.n_layer) == (50257, 25, 64, 12)
    assert model.default_hparams().n_vocab == 0  # each call makes new defaults
    assert model.default_hparams().override_from_json('{"n_layer": 3}').n_layer == 3


def test_rejected_override_changes_nothing():
    hparams = model.default_hparams()
    with pytest.raises(ValueError, match="n_embd \\(1600\\) must be divisible by n_head \\(12\\)"):
        hparams.override_from_dict({"n_vocab": 50257, "n_embd": 1600})
    assert dataclasses.asdict(hparams) == dataclasses.asdict(model.default_hparams())
    with pytest.raises(ValueError, match="must be a JSON object"):
        hparams.override_from_dict([["n_layer", 3]])


@pytest.mark.parametrize("values, message", [
    ({"n_layers": 3}, "unknown key(s) n_layers"),
    ({"n_head": 5}, "n_embd (768) must be divisible by n_head (5)"),
    ({"n_ctx": 0}, "n_ctx must be an integer >= 1. Received: 0"),
    ({"n_embd": "768"}, "n_embd must be an integer >= 1. Received: '768'"),
    ({"n_vocab": -1}, "n_vocab must be an integer >= 0. Received: -1"),
])
def test_bad_hparams_are_rejected_by_name(values, message):
    with pytest.raises(ValueError) as e:
        model.default_hparams().override_from_dict(values)
    assert message in str(e.value)


# --- loading --------------------------------------------------------------------------------

LOADERS = pytest.mark.parametrize("load_params", [model.load_params, fast.load_params], ids=["model", "fast"])

def test_checkpoint_names_and_shapes_are_openais():
    shapes = model.checkpoint_shapes(model.default_hparams().override_from_dict(checkpoints.OFFICIAL["124M"]))
    assert len(shapes) == 2 + 12 * 12 + 2
    assert shapes["model/wte"] == [50257, 768] and shapes["model/wpe"] == [1024, 768]
    assert shapes["model/h11/attn/c_attn/w"] == [1, 768, 2304]
    assert shapes["model/h0/mlp/c_proj/w"] == [1, 3072, 768]
    assert shapes["model/ln_f/b"] == [768]


def test_params_are_keyed_like_the_checkpoint(models_dir, tiny_model):
    path = os.path.join(models_dir, tiny_model)
    hparams, params = load(path)
    tf.nest.map_structure(np.testing.assert_array_equal, fast.load_params(model.find_checkpoint(path), hparams),
                          params)  # the fast loader reads the same
    reader = tf.train.load_checkpoint(os.path.join(path, "model.ckpt"))
    np.testing.assert_array_equal(params["h"][1]["attn"]["c_attn"]["w"], reader.get_tensor("model/h1/attn/c_attn/w")[0])
    np.testing.assert_array_equal(params["ln_f"]["g"], reader.get_tensor("model/ln_f/g"))
    assert len(params["h"]) == hparams.n_layer


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_the_fast_loader_reads_group_by_group_what_the_reference_reads(models_dir, tiny_model, monkeypatch, dtype):
    """A read at a time, each a few whole layers (here one, with a limit below a layer's size),
    cast before the next: the same weights in the same dtypes as model.load_params."""
    path = os.path.join(models_dir, tiny_model)
    hparams = model.load_hparams(path)
    monkeypatch.setattr(fast, "READ_BYTES", 1)
    grouped = fast.load_params(model.find_checkpoint(path), hparams, dtype)
    expected = model.load_params(model.find_checkpoint(path), hparams, dtype)
    assert tf.nest.map_structure(lambda w: w.dtype, grouped) == tf.nest.map_structure(lambda w: w.dtype, expected)
    tf.nest.map_structure(np.testing.assert_array_equal, grouped, expected)


def test_a_checkpoint_saved_in_half_precision_loads_as_the_reference_loads_it(models_dir, tiny_model, tmp_path):
    """Another tool's OpenAI-format checkpoint in float16: read in the dtype it holds, then cast."""
    path = os.path.join(models_dir, tiny_model)
    hparams = model.load_hparams(path)
    values = model.read_checkpoint(model.find_checkpoint(path), hparams)
    prefix = str(tmp_path / "model.ckpt")
    saving.write_tensors(prefix, {name: value.astype(np.float16) for name, value in values.items()})
    for dtype in (tf.float32, tf.bfloat16):
        tf.nest.map_structure(np.testing.assert_array_equal, fast.load_params(prefix, hparams, dtype),
                              model.load_params(prefix, hparams, dtype))


def test_read_groups_are_whole_layers_under_the_limit():
    hparams = model.default_hparams().override_from_dict(checkpoints.OFFICIAL["124M"])
    shapes = model.checkpoint_shapes(hparams)
    groups = fast.read_groups(shapes, hparams.n_layer, 256 * 2 ** 20)
    assert sorted(sum(groups, [])) == sorted(shapes)  # every name once
    for group in groups:
        assert 4 * sum(int(np.prod(shapes[name])) for name in group) <= 256 * 2 ** 20
        layers = {name.split("/")[1] for name in group if name.startswith("model/h")}
        assert all(len([n for n in group if n.startswith(f"model/{layer}/")]) == 12 for layer in layers)
    assert len(groups) == 2  # wte, wpe, ln_f and 3 layers; then 9 layers
    assert [len(g) for g in fast.read_groups(shapes, hparams.n_layer, 1)] == [4] + [12] * 12


def test_missing_model_names_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        model.model_dir("355M", str(tmp_path))
    assert f"python3 download_model.py 355M --models_dir {tmp_path}" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"`python3 download_model.py 774M`$"):
        model.model_dir("774M", "models")


def test_unreadable_model_folder_is_named_not_missing(models_dir, tiny_model, tmp_path, monkeypatch):
    """A folder this user may not read (simulated: root may read any) is not "not found"."""
    path = copy_model(models_dir, tiny_model, tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != path and real_access(p, mode))
    with pytest.raises(PermissionError) as e:
        model.model_dir(tiny_model, str(tmp_path))
    assert str(e.value) == f"{path} is unreadable (permission denied); let this user read it, e.g. `chmod -R u+rX {path}`"


def copy_model(models_dir, name, tmp_path):
    path = str(tmp_path / name)
    shutil.copytree(os.path.join(models_dir, name), path)
    return path


def edit_hparams(path, **changes):
    with open(os.path.join(path, "hparams.json")) as f:
        values = json.load(f)
    with open(os.path.join(path, "hparams.json"), "w") as f:
        json.dump({**values, **changes}, f)


@pytest.mark.parametrize("changes, message", [
    ({"n_ctx": 32}, "model/wpe has shape [64, 32], expected [32, 32]"),
    ({"n_layer": 3}, "n_layer is 3, the checkpoint has 2 layers"),
    ({"n_layer": 1}, "n_layer is 1, the checkpoint has 2 layers"),
    ({"n_layer": 10 ** 12}, "n_layer is 1000000000000, the checkpoint has 2 layers"),
    ({"n_embd": 64, "n_head": 4}, "model/wte has shape [50257, 32], expected [50257, 64]"),
])
@LOADERS
def test_checkpoint_mismatch_names_the_variable_and_shapes(models_dir, tiny_model, tmp_path, changes, message,
                                                           load_params):
    path = copy_model(models_dir, tiny_model, tmp_path)
    edit_hparams(path, **changes)
    hparams = model.load_hparams(path)
    with pytest.raises(ValueError, match="checkpoint does not match hparams.json") as e:
        load_params(model.find_checkpoint(path), hparams)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_checkpoint_file_is_one_clear_error(models_dir, tiny_model, tmp_path):
    path = copy_model(models_dir, tiny_model, tmp_path)
    os.remove(os.path.join(path, "checkpoint"))
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*download the model again"):
        model.find_checkpoint(path)


def test_missing_checkpoint_data_is_one_clear_error_and_nothing_else(models_dir, tiny_model, tmp_path, caplog):
    path = copy_model(models_dir, tiny_model, tmp_path)
    os.remove(os.path.join(path, "model.ckpt.index"))
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*: its `checkpoint` file names .*model.ckpt, which "
                                                "has no model.ckpt.index; download the model again"):
        model.find_checkpoint(path)
    assert [r.getMessage() for r in caplog.records] == []  # no "Couldn't match files" from TensorFlow before it


def test_a_folder_without_hparams_json_is_named_not_called_missing(models_dir, tiny_model, tmp_path):
    path = copy_model(models_dir, tiny_model, tmp_path)
    os.remove(os.path.join(path, "hparams.json"))
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(path)} has no hparams.json, which every model folder "
                                                "holds: "):
        model.model_dir(os.path.basename(path), os.path.dirname(path))


def test_a_checkpoint_file_with_a_relative_path_finds_the_prefix(models_dir, tiny_model, tmp_path):
    path = copy_model(models_dir, tiny_model, tmp_path)
    assert model.find_checkpoint(path) == os.path.join(path, "model.ckpt")


@LOADERS
def test_corrupt_checkpoint_data_is_one_clear_error(models_dir, tiny_model, tmp_path, load_params):
    path = copy_model(models_dir, tiny_model, tmp_path)
    with open(os.path.join(path, "model.ckpt.index"), "wb") as f:
        f.write(b"<?xml version='1.0'?><Error>BlobNotFound</Error>")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_params(model.find_checkpoint(path), model.load_hparams(path))


@LOADERS
def test_truncated_checkpoint_data_is_one_clear_error(models_dir, tiny_model, tmp_path, load_params):
    path = copy_model(models_dir, tiny_model, tmp_path)
    os.truncate(os.path.join(path, "model.ckpt.data-00000-of-00001"), 100_000)
    with pytest.raises(ValueError) as e:
        load_params(model.find_checkpoint(path), model.load_hparams(path))
    message = str(e.value)
    assert message.startswith("cannot read checkpoint") and message.endswith("download the model again")
    assert "\n" not in message and "{{" not in message and "[Op:" not in message


@pytest.mark.parametrize("text, message", [
    ("<Error>", "hparams.json is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "hparams.json is not valid JSON (nested too deeply)"),
    ('{"n_layer": ' + "9" * 100_000 + "}", "hparams.json is not valid JSON"),
    ("[12, 768]", "hparams must be a JSON object"),
    (b"\xff\xfe{}", "hparams.json is not valid JSON"),
])
def test_corrupt_hparams_is_one_clear_error(models_dir, tiny_model, tmp_path, text, message):
    path = copy_model(models_dir, tiny_model, tmp_path)
    with open(os.path.join(path, "hparams.json"), "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as e:
        model.load_hparams(path)
    assert message in str(e.value) and "\n" not in str(e.value)


# --- the forward pass against the NumPy reference ---------------------------------------------

def test_logits_equal_reference(models_dir, tiny_model):
    path = os.path.join(models_dir, tiny_model)
    hparams, params = load(path)
    tokens = random_tokens(hparams.n_vocab, 3, 40)
    out = model.model(params, hparams, tokens)
    np.testing.assert_allclose(out["logits"], reference_logits(path, tokens), atol=1e-4, rtol=0)
    assert out["present"].shape == [3, hparams.n_layer, 2, hparams.n_head, 40, hparams.head_dim]


def test_past_gives_the_same_logits_as_the_full_pass(models_dir, tiny_model):
    path = os.path.join(models_dir, tiny_model)
    hparams, params = load(path)
    tokens = random_tokens(hparams.n_vocab, 2, 30, seed=1)
    forward = model.compile_model(params, hparams)
    past = model.empty_past(hparams, 2, tf.float32)
    logits = []
    for start, end in [(0, 11), (11, 12), (12, 30)]:
        out = forward(tokens[:, start:end], past)
        past = tf.concat([past, out["present"]], axis=4)
        logits.append(out["logits"])
    np.testing.assert_allclose(tf.concat(logits, 1), reference_logits(path, tokens), atol=1e-4, rtol=0)


def test_compiled_forward_is_traced_once(models_dir, tiny_model):
    hparams, params = load(os.path.join(models_dir, tiny_model))
    forward = model.compile_model(params, hparams)
    for batch, seq, past_len in [(1, 5, 0), (2, 17, 0), (3, 1, 9), (1, 64, 0)]:
        forward(random_tokens(hparams.n_vocab, batch, seq), tf.zeros(model.past_shape(hparams, batch, past_len)))
    assert forward.experimental_get_tracing_count() == 1


# --- every official shape, and unusual ones ------------------------------------------------

SHAPES = {
    **{f"{name}-1layer": {**shape, "n_layer": 1} for name, shape in checkpoints.OFFICIAL.items()},
    "odd-heads": dict(n_vocab=300, n_ctx=96, n_embd=80, n_head=5, n_layer=3),
    "one-head": dict(n_vocab=77, n_ctx=8, n_embd=12, n_head=1, n_layer=1),
}


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_equals_reference(tmp_path, name):
    """The real widths and head counts (n_head 25 for 1558M) with one layer, and odd shapes."""
    path = checkpoints.write_checkpoint(str(tmp_path / name), SHAPES[name])
    hparams, params = load(path)
    tokens = random_tokens(hparams.n_vocab, 1, min(hparams.n_ctx, 12))
    np.testing.assert_allclose(model.model(params, hparams, tokens)["logits"], reference_logits(path, tokens),
                               atol=1e-4, rtol=0)


@pytest.mark.slow
def test_full_size_124M_checkpoint_equals_reference(tmp_path):
    path = checkpoints.write_checkpoint(str(tmp_path / "124M"), checkpoints.OFFICIAL["124M"])
    hparams, params = load(path)
    tokens = random_tokens(hparams.n_vocab, 1, 8)
    np.testing.assert_allclose(model.model(params, hparams, tokens)["logits"], reference_logits(path, tokens),
                               atol=1e-4, rtol=0)
