"""src/convert_checkpoint.py: GPT-2 between OpenAI's format and Hugging Face's.

Known answers (names, shapes, parameter counts of every released size), behaviour on the tiny
model (round trips bit for bit, transformers' own file layouts, shards, half precision, a
train.py run, every bad input in one line with no destination left), and equivalence with the
NumPy reference. bench/check_hf.py holds the exported folders to transformers itself.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file

import checkpoints
import cli
import convert_checkpoint
import model
import reference
from convert_checkpoint import config_from_hparams, convert, hf_name, hf_shapes, hparams_from_config
from helpers import REPO, RecordingBar

SCRIPT = os.path.join(REPO, "src", "convert_checkpoint.py")
DISTILGPT2 = dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=6)
# distilgpt2's config.json as the Hub has it: fields this GPT-2 does not read are ignored.
DISTILGPT2_CONFIG = {
    "_num_labels": 1, "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "id2label": {"0": "LABEL_0"},
    "initializer_range": 0.02, "label2id": {"LABEL_0": 0}, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
    "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 6, "n_positions": 1024, "resid_pdrop": 0.1,
    "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257}


def checkpoint_weights(path):
    """{name: array} of the latest checkpoint of an OpenAI-format folder."""
    reader = tf.train.load_checkpoint(model.find_checkpoint(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write_config(folder, **changes):
    """Changes config.json's fields (None removes one)."""
    path = os.path.join(folder, "config.json")
    config = json.loads(read(path))
    config.update(changes)
    with open(path, "w") as f:
        json.dump({key: value for key, value in config.items() if value is not None}, f)


@pytest.fixture(scope="module")
def openai_dir(models_dir, tiny_model):
    return os.path.join(models_dir, tiny_model)


@pytest.fixture(scope="module")
def hf_dir(openai_dir, tmp_path_factory):
    """The tiny model exported to Hugging Face's format."""
    path = str(tmp_path_factory.mktemp("hf") / "tiny")
    convert(openai_dir, path, "openai", "hf")
    return path


@pytest.fixture
def hf_copy(hf_dir, tmp_path):
    """A copy of `hf_dir` to change."""
    return shutil.copytree(hf_dir, str(tmp_path / "src"))


# --- Known answers ------------------------------------------------------------------------------

@pytest.mark.parametrize("openai, hf", [
    ("model/wte", "wte.weight"), ("model/wpe", "wpe.weight"),
    ("model/h0/ln_1/g", "h.0.ln_1.weight"), ("model/h0/ln_1/b", "h.0.ln_1.bias"),
    ("model/h11/attn/c_attn/w", "h.11.attn.c_attn.weight"), ("model/h3/attn/c_proj/b", "h.3.attn.c_proj.bias"),
    ("model/h7/mlp/c_fc/w", "h.7.mlp.c_fc.weight"), ("model/h7/ln_2/g", "h.7.ln_2.weight"),
    ("model/ln_f/g", "ln_f.weight"), ("model/ln_f/b", "ln_f.bias"),
])
def test_names_known_answers(openai, hf):
    assert hf_name(openai) == hf


# transformers' parameter counts of gpt2, gpt2-medium, gpt2-large, gpt2-xl and distilgpt2
@pytest.mark.parametrize("shape, parameters", [
    (checkpoints.OFFICIAL["124M"], 124_439_808), (checkpoints.OFFICIAL["355M"], 354_823_168),
    (checkpoints.OFFICIAL["774M"], 774_030_080), (checkpoints.OFFICIAL["1558M"], 1_557_611_200),
    (DISTILGPT2, 81_912_576),
])
def test_every_size_maps_to_transformers_shapes_and_config(shape, parameters):
    hparams = model.HParams(**shape)
    shapes = hf_shapes(hparams)
    assert sum(math.prod(s) for _, s in shapes.values()) == parameters
    assert len(shapes) == 4 + 12 * hparams.n_layer
    e = hparams.n_embd
    assert shapes["h.0.attn.c_attn.weight"] == ("model/h0/attn/c_attn/w", [e, 3 * e])
    assert shapes["h.0.mlp.c_proj.weight"] == ("model/h0/mlp/c_proj/w", [4 * e, e])
    assert shapes["wte.weight"] == ("model/wte", [50257, e])
    assert hparams_from_config(config_from_hparams(hparams, 50256), "config.json") == hparams


def test_distilgpt2s_config_reads_as_six_layers():
    assert hparams_from_config(DISTILGPT2_CONFIG, "config.json") == model.HParams(**DISTILGPT2)
    assert hparams_from_config({"model_type": "gpt2"}, "config.json") == model.HParams(**checkpoints.OFFICIAL["124M"])


def test_the_export_is_transformers_layout(openai_dir, hf_dir, vocab_dir):
    assert sorted(os.listdir(hf_dir)) == ["config.json", "generation_config.json", "merges.txt",
                                          "model.safetensors", "vocab.json"]
    assert read(os.path.join(hf_dir, "vocab.json")) == read(os.path.join(vocab_dir, "encoder.json"))
    assert read(os.path.join(hf_dir, "merges.txt")) == read(os.path.join(vocab_dir, "vocab.bpe"))
    config = json.loads(read(os.path.join(hf_dir, "config.json")))
    assert {key: config[key] for key in ("model_type", "architectures", "vocab_size", "n_positions", "n_embd",
                                         "n_layer", "n_head", "activation_function", "tie_word_embeddings",
                                         "eos_token_id")} == {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257, "n_positions": 64,
        "n_embd": 32, "n_layer": 2, "n_head": 4, "activation_function": "gelu_new", "tie_word_embeddings": True,
        "eos_token_id": 50256}
    assert json.loads(read(os.path.join(hf_dir, "generation_config.json"))) == {"bos_token_id": 50256,
                                                                                 "eos_token_id": 50256}
    tensors, original = load_file(os.path.join(hf_dir, "model.safetensors")), checkpoint_weights(openai_dir)
    assert len(tensors) == 28 and "lm_head.weight" not in tensors
    assert tensors["transformer.h.1.attn.c_attn.weight"].shape == (32, 96)
    np.testing.assert_array_equal(tensors["transformer.h.1.attn.c_attn.weight"], original["model/h1/attn/c_attn/w"][0])
    np.testing.assert_array_equal(tensors["transformer.h.0.ln_2.weight"], original["model/h0/ln_2/g"])
    np.testing.assert_array_equal(tensors["transformer.wpe.weight"], original["model/wpe"])
    assert all(value.dtype == np.float32 for value in tensors.values())
    umask = os.umask(0)
    os.umask(umask)
    assert {os.stat(os.path.join(hf_dir, name)).st_mode & 0o777 for name in os.listdir(hf_dir)} == {0o666 & ~umask}
    assert os.stat(hf_dir).st_mode & 0o777 == 0o777 & ~umask


# --- Behaviour: round trips, transformers' layouts, shards, half precision ----------------------

def test_openai_hf_openai_is_bit_identical(openai_dir, hf_dir, tmp_path):
    back = str(tmp_path / "back")
    convert(hf_dir, back, "hf", "openai")
    original, returned = checkpoint_weights(openai_dir), checkpoint_weights(back)
    assert set(returned) == set(original)
    for name, value in original.items():
        assert returned[name].dtype == value.dtype and returned[name].tobytes() == value.tobytes(), name
    assert model.load_hparams(back) == model.load_hparams(openai_dir)
    for name in ("encoder.json", "vocab.bpe"):
        assert read(os.path.join(back, name)) == read(os.path.join(openai_dir, name))


def test_hf_openai_hf_is_byte_identical(hf_dir, tmp_path):
    convert(hf_dir, str(tmp_path / "openai"), "hf", "openai")
    convert(str(tmp_path / "openai"), str(tmp_path / "hf"), "openai", "hf")
    for name in os.listdir(hf_dir):
        assert read(os.path.join(tmp_path, "hf", name)) == read(os.path.join(hf_dir, name)), name


def foreign(hf_dir, folder, dtype, prefix):
    """A copy of hf_dir as other writers lay it out: weights in `dtype`, names without the
    prefix or with it, lm_head.weight (tied), and the causal-mask buffers of older files.
    Returns the weights as float32, keyed without the prefix."""
    shutil.copytree(hf_dir, folder)
    tensors = {name.removeprefix("transformer."): value.astype(dtype)
               for name, value in load_file(os.path.join(hf_dir, "model.safetensors")).items()}
    tensors["lm_head.weight"] = tensors["wte.weight"]
    stored = {prefix + name: value for name, value in tensors.items()}
    for i in range(2):
        stored[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((64, 64), np.uint8))[None, None]
        stored[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(stored, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return {name: value.astype(np.float32) for name, value in tensors.items()}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_transformers_layouts_and_half_precision_import_exactly(hf_dir, tmp_path, dtype, prefix):
    numpy_dtype = tf.as_dtype(dtype).as_numpy_dtype  # ml_dtypes' bfloat16, which safetensors writes as BF16
    tensors = foreign(hf_dir, str(tmp_path / "src"), numpy_dtype, prefix)
    convert(str(tmp_path / "src"), str(tmp_path / "openai"), "hf", "openai")
    imported = checkpoint_weights(str(tmp_path / "openai"))
    for name, (openai, _) in hf_shapes(model.load_hparams(str(tmp_path / "openai"))).items():
        assert imported[openai].dtype == np.float32
        np.testing.assert_array_equal(imported[openai].reshape(tensors[name].shape), tensors[name], err_msg=name)


def test_sharded_safetensors_import_as_one_file(hf_dir, tmp_path):
    shards = str(tmp_path / "shards")
    shutil.copytree(hf_dir, shards)
    tensors = load_file(os.path.join(shards, "model.safetensors"))
    os.remove(os.path.join(shards, "model.safetensors"))
    names, weight_map = sorted(tensors), {}
    for i in range(3):
        filename = f"model-0000{i + 1}-of-00003.safetensors"
        save_file({name: tensors[name] for name in names[i::3]}, os.path.join(shards, filename), {"format": "pt"})
        weight_map.update({name: filename for name in names[i::3]})
    with open(os.path.join(shards, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}, f)
    convert(shards, str(tmp_path / "from_shards"), "hf", "openai")
    convert(hf_dir, str(tmp_path / "from_one"), "hf", "openai")
    a, b = checkpoint_weights(str(tmp_path / "from_shards")), checkpoint_weights(str(tmp_path / "from_one"))
    assert all(a[name].tobytes() == b[name].tobytes() for name in b) and set(a) == set(b)


def test_a_train_py_run_converts_its_latest_step(openai_dir, tmp_path):
    text = tmp_path / "data.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, os.path.join(REPO, "src", "train.py"), "--dataset", str(text),
                             "--model_name", os.path.basename(openai_dir), "--models_dir", os.path.dirname(openai_dir),
                             "--checkpoint_dir", str(tmp_path / "checkpoint"), "--steps", "2", "--save_every", "1",
                             "--sequence_length", "8", "--sample_every", "0", "--learning_rate", "0.01",
                             "--seed", "1"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = str(tmp_path / "checkpoint" / "run1")
    convert(run, str(tmp_path / "hf"), "openai", "hf")
    convert(str(tmp_path / "hf"), str(tmp_path / "back"), "hf", "openai")
    trained, returned = checkpoint_weights(run), checkpoint_weights(str(tmp_path / "back"))
    assert model.find_checkpoint(run).endswith("model-2")
    assert not np.array_equal(trained["model/h0/mlp/c_fc/w"], checkpoint_weights(openai_dir)["model/h0/mlp/c_fc/w"])
    assert all(returned[name].tobytes() == value.tobytes() for name, value in trained.items())


# --- Bad input: one line, exit status 1, no destination ---------------------------------------

def fails(*argv):
    """The error line of convert_checkpoint.py run on argv (in this process); checks that it is
    one line, that the exit status is 1, and that no destination or temporary folder is left."""
    dst = argv[-1]
    existed = os.path.exists(dst)
    siblings = set(os.listdir(os.path.dirname(dst)))
    with pytest.raises(SystemExit) as exit_:
        cli.main(convert_checkpoint.convert_checkpoint, list(argv))
    line = exit_.value.code
    assert isinstance(line, str) and line.startswith("error: ") and "\n" not in line, line  # sys.exit(str): status 1
    assert os.path.exists(dst) == existed and set(os.listdir(os.path.dirname(dst))) == siblings
    return line


def to_openai(src, tmp_path):
    return fails("--from", "hf", "--to", "openai", src, str(tmp_path / "dst"))


def test_a_folder_without_weights(hf_copy, tmp_path):
    os.remove(os.path.join(hf_copy, "model.safetensors"))
    assert "no weights in" in to_openai(hf_copy, tmp_path)
    with open(os.path.join(hf_copy, "pytorch_model.bin"), "wb") as f:
        f.write(b"\0")
    assert "safe_serialization=True" in to_openai(hf_copy, tmp_path)


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_a_truncated_safetensors_file(hf_copy, tmp_path, keep):
    path = os.path.join(hf_copy, "model.safetensors")
    data = read(path)
    with open(path, "wb") as f:
        f.write(data[:keep])
    assert "is not a whole safetensors file" in to_openai(hf_copy, tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"n_embd": 64}, "does not match config.json: wte.weight is [50257, 32], config.json makes it [50257, 64]"),
    ({"n_layer": 3}, "does not match config.json: n_layer is 3, the weights have 2 layers"),
    ({"n_layer": 1}, "does not match config.json: n_layer is 1, the weights have 2 layers"),
    ({"n_inner": 4 * 32, "n_embd": None}, "n_inner is 128 (GPT-2: null or 4 * n_embd)"),
    ({"vocab_size": 50000}, "wte.weight is [50257, 32], config.json makes it [50000, 32]"),
    ({"n_positions": 128}, "wpe.weight is [64, 32], config.json makes it [128, 32]"),
    ({"n_head": 5}, "holds no usable GPT-2 shape (hparams: n_embd (32) must be divisible by n_head (5))"),
])
def test_config_and_tensor_shapes_that_disagree(hf_copy, tmp_path, changes, message):
    write_config(hf_copy, **changes)
    assert message in to_openai(hf_copy, tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "gptj"}, 'model_type is "gptj" (GPT-2: "gpt2")'),
    ({"model_type": None}, 'model_type is null (GPT-2: "gpt2")'),
    ({"activation_function": "relu"}, 'activation_function is "relu" (GPT-2: "gelu_new")'),
    ({"activation_function": "gelu"}, 'activation_function is "gelu" (GPT-2: "gelu_new")'),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon is 1e-06 (GPT-2: 1e-05)"),
    ({"n_inner": 100}, "n_inner is 100 (GPT-2: null or 4 * n_embd)"),
    ({"scale_attn_weights": False}, "scale_attn_weights is false (GPT-2: true)"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx is true (GPT-2: false)"),
    ({"add_cross_attention": True}, "add_cross_attention is true (GPT-2: false)"),
    ({"architectures": ["GPT2ForSequenceClassification"]}, 'architectures is ["GPT2ForSequenceClassification"]'),
    ({"architectures": "GPT2ForSequenceClassification"},
     'architectures is "GPT2ForSequenceClassification" (GPT-2: ["GPT2LMHeadModel"])'),
    ({"architectures": 7}, 'architectures is 7 (GPT-2: ["GPT2LMHeadModel"])'),
    ({"tie_word_embeddings": False}, "untied output weights"),
])
def test_other_architectures_are_refused_saying_what_differs(hf_copy, tmp_path, changes, message):
    write_config(hf_copy, **changes)
    line = to_openai(hf_copy, tmp_path)
    assert message in line, line


@pytest.mark.parametrize("architectures", [["GPT2Model"], "GPT2LMHeadModel"])  # a string names one too
def test_what_computes_the_same_is_accepted(hf_copy, tmp_path, architectures):
    write_config(hf_copy, activation_function="gelu_pytorch_tanh", n_inner=128, reorder_and_upcast_attn=True,
                 architectures=architectures)
    convert(hf_copy, str(tmp_path / "dst"), "hf", "openai")


def test_an_output_layer_equal_to_the_embedding_is_tied_whatever_the_config_says(hf_copy, tmp_path):
    path = os.path.join(hf_copy, "model.safetensors")
    tensors = load_file(path)
    save_file({**tensors, "lm_head.weight": tensors["transformer.wte.weight"]}, path, {"format": "pt"})
    write_config(hf_copy, tie_word_embeddings=False)
    convert(hf_copy, str(tmp_path / "dst"), "hf", "openai")


def test_untied_output_weights_are_refused(hf_copy, tmp_path):
    path = os.path.join(hf_copy, "model.safetensors")
    tensors = load_file(path)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1
    save_file(tensors, path, {"format": "pt"})
    line = to_openai(hf_copy, tmp_path)
    assert "untied output weights" in line and "NaN" not in line


def test_a_tied_output_layer_holding_nan_is_tied(hf_copy, tmp_path):
    """NaN != NaN: an output layer equal to the embedding, NaN for NaN, is the embedding (and
    converts as it is); one with a NaN of its own is not, and the line says it holds NaN."""
    path = os.path.join(hf_copy, "model.safetensors")
    tensors = load_file(path)
    tensors["transformer.wte.weight"][5, 3] = np.nan
    save_file({**tensors, "lm_head.weight": tensors["transformer.wte.weight"]}, path, {"format": "pt"})
    convert(hf_copy, str(tmp_path / "tied"), "hf", "openai")
    assert np.isnan(checkpoint_weights(str(tmp_path / "tied"))["model/wte"][5, 3])
    head = tensors["transformer.wte.weight"].copy()
    head[7, 1] = np.nan
    save_file({**tensors, "lm_head.weight": head}, path, {"format": "pt"})
    line = to_openai(hf_copy, tmp_path)
    assert "is not the token embedding (wte.weight); lm_head.weight holds NaN; GPT-2 ties them" in line, line


@pytest.mark.parametrize("case, message", [
    ("float64", "h.0.attn.c_attn.bias is F64; only F32, F16, BF16 weights convert"),
    ("twice", "holds wte.weight twice"),
    ("missing", "does not match config.json: missing h.1.mlp.c_fc.bias [128]"),
    ("missing shard", "model-00002-of-00002.safetensors, which model.safetensors.index.json lists, is missing"),
    ("no vocab.json", "has no vocab.json: copy GPT-2's tokenizer files there"),
    ("bad config", "config.json is not valid JSON"),
    ("bad vocab.json", "vocab.json is not valid JSON"),
    ("vocab.json a list", "vocab.json is not a vocabulary (a JSON object of token: id)"),
    ("merges.txt not merges", "merges.txt line 2 is not a merge (two tokens and a space): 'Ġt h e'; copy the "
                              "model's own there"),
    ("merges.txt of another vocabulary", "merges.txt line 2: BPE merge ('Ġ', 'zzzz') is not two tokens"),
    ("merges.txt not UTF-8", "merges.txt is not UTF-8 text (invalid start byte at byte 0)"),
    ("merges.txt empty", "merges.txt has no merges"),
    ("index a list", "model.safetensors.index.json has no weight_map of file names"),
    ("index of a path", "model.safetensors.index.json lists '/elsewhere/model.safetensors', not the name of a file "
                        "beside it: the shards must lie in the folder, listed by their file names"),
    ("shard a folder", "adir, which model.safetensors.index.json lists, is not a file: download it"),
    ("no config", "has no config.json: it is not a Hugging Face model folder"),
    ("vocab.json of a larger model", "vocab.json has token ids from 0 to 50257, but the model has 50257 token "
                                     "embeddings (ids 0 to 50256): the vocabulary is another model's"),
])
def test_other_bad_hf_folders(hf_copy, tmp_path, case, message):
    path = os.path.join(hf_copy, "model.safetensors")
    tensors = load_file(path)
    if case == "float64":
        tensors = {name: value.astype(np.float64) if name == "transformer.h.0.attn.c_attn.bias" else value
                   for name, value in tensors.items()}
        save_file(tensors, path)
    elif case == "twice":
        save_file({**tensors, "wte.weight": tensors["transformer.wte.weight"]}, path)
    elif case == "missing":
        del tensors["transformer.h.1.mlp.c_fc.bias"]
        save_file(tensors, path)
    elif case == "missing shard":
        os.rename(path, os.path.join(hf_copy, "model-00001-of-00002.safetensors"))
        with open(os.path.join(hf_copy, "model.safetensors.index.json"), "w") as f:
            json.dump({"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors",
                                      "transformer.wpe.weight": "model-00002-of-00002.safetensors"}}, f)
    elif case == "no vocab.json":
        os.remove(os.path.join(hf_copy, "vocab.json"))
    elif case == "bad config":
        with open(os.path.join(hf_copy, "config.json"), "w") as f:
            f.write("{")
    elif case in ("bad vocab.json", "vocab.json a list"):  # copied as it was, it made a folder no script reads
        with open(os.path.join(hf_copy, "vocab.json"), "w") as f:
            f.write("{" if case == "bad vocab.json" else "[1, 2]")
    elif case == "no config":
        os.remove(os.path.join(hf_copy, "config.json"))
    elif case == "vocab.json of a larger model":  # converted, its ids past the embedding failed in every script
        with open(os.path.join(hf_copy, "vocab.json"), encoding="utf-8") as f:
            vocabulary = json.load(f)
        with open(os.path.join(hf_copy, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({**vocabulary, "zzqx": 50257}, f)
    elif case.startswith("merges.txt"):  # copied as it was, it made a folder no script reads
        text = {"merges.txt not merges": "#version: 0.2\nĠt h e\n", "merges.txt not UTF-8": b"\xff\n".decode("latin-1"),
                "merges.txt of another vocabulary": "#version: 0.2\nĠ zzzz\n", "merges.txt empty": ""}[case]
        with open(os.path.join(hf_copy, "merges.txt"), "w", encoding="latin-1" if "UTF-8" in case else "utf-8") as f:
            f.write(text)
    elif case == "index a list":
        os.remove(path)
        with open(os.path.join(hf_copy, "model.safetensors.index.json"), "w") as f:
            json.dump(["model.safetensors"], f)
    elif case in ("index of a path", "shard a folder"):
        os.remove(path)
        os.mkdir(os.path.join(hf_copy, "adir"))
        name = "/elsewhere/model.safetensors" if case == "index of a path" else "adir"
        with open(os.path.join(hf_copy, "model.safetensors.index.json"), "w") as f:
            json.dump({"weight_map": {"transformer.wte.weight": name}}, f)
    line = to_openai(hf_copy, tmp_path)
    assert message in line, line


def test_bad_openai_folders(openai_dir, hf_dir, tmp_path):
    dst = str(tmp_path / "dst")
    broken = shutil.copytree(openai_dir, str(tmp_path / "broken"))
    os.remove(os.path.join(broken, "checkpoint"))
    assert "no checkpoint in" in fails("--from", "openai", "--to", "hf", broken, dst)
    other = shutil.copytree(openai_dir, str(tmp_path / "other"))
    with open(os.path.join(other, "hparams.json"), "w") as f:
        json.dump({**checkpoints.TINY, "n_embd": 64}, f)
    assert "checkpoint does not match hparams.json" in fails("--from", "openai", "--to", "hf", other, dst)
    with open(os.path.join(other, "hparams.json"), "w") as f:
        json.dump(checkpoints.TINY, f)
    with open(os.path.join(other, "vocab.bpe"), "a", encoding="utf-8") as f:
        f.write("a b c\n")
    assert "vocab.bpe line 50002 is not a merge" in fails("--from", "openai", "--to", "hf", other, dst)
    os.remove(os.path.join(broken, "encoder.json"))
    shutil.copy(os.path.join(openai_dir, "checkpoint"), broken)
    assert "has no encoder.json" in fails("--from", "openai", "--to", "hf", broken, dst)
    assert "use --from hf" in fails("--from", "openai", "--to", "hf", hf_dir, dst)
    assert "use --from openai" in fails("--from", "hf", "--to", "openai", openai_dir, dst)


def test_a_conversion_shows_its_stages_in_a_bar(openai_dir, tmp_path, monkeypatch):
    """1558M takes ~5 s to read and ~30 s to write, which a terminal should not sit through silent."""
    monkeypatch.setattr(RecordingBar, "bars", [])
    monkeypatch.setattr(convert_checkpoint, "tqdm", RecordingBar)
    convert(openai_dir, str(tmp_path / "hf"), "openai", "hf")
    [bar] = RecordingBar.bars
    assert (bar.kwargs["desc"], bar.kwargs["total"], bar.kwargs["disable"]) == ("converting", 2, None)
    assert bar.updates == [1, 1]
    assert bar.postfixes == [f"reading {openai_dir}", f"writing {tmp_path / 'hf'}"]


def test_an_empty_destination_is_refused_writing_nothing(openai_dir, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # "" was made beside the working folder, then failed to rename
    with pytest.raises(ValueError, match="^the destination is an empty path: give the folder to make$"):
        convert(openai_dir, "", "openai", "hf")
    assert os.listdir(tmp_path) == ["cwd"] and os.listdir(tmp_path / "cwd") == []


def test_bad_flags_and_an_existing_destination(openai_dir, hf_dir, tmp_path):
    for missing, given in (("--from", ["--to", "hf"]), ("--to", ["--from", "openai"])):
        assert fails(*given, openai_dir, str(tmp_path / "dst")) == (
            f"error: {missing} is required: {missing} openai or {missing} hf (convert_checkpoint.py --from hf "
            "--to openai SRC DST)")
    assert "--from must be openai or hf. Received: 'tf'" in fails("--from", "tf", "--to", "hf", openai_dir,
                                                                   str(tmp_path / "dst"))
    assert "--from and --to are both hf" in fails("--from", "hf", "--to", "hf", hf_dir, str(tmp_path / "dst"))
    (tmp_path / "dst").mkdir()
    line = fails("--from", "openai", "--to", "hf", openai_dir, str(tmp_path / "dst"))
    assert line == f"error: {tmp_path / 'dst'} exists: give a destination that does not, or remove it first"
    assert os.listdir(tmp_path / "dst") == []


def test_a_destination_that_cannot_be_made_is_refused_before_reading(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder; choose another destination"):
        convert(str(tmp_path), str(tmp_path / "file" / "dst"), "hf", "openai")  # tmp_path: no model to read


def test_a_failure_while_writing_leaves_no_destination(openai_dir, hf_dir, tmp_path, monkeypatch):
    import saving
    import safetensors.numpy

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(saving, "write_tensors", full)
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    assert "No space left on device" in fails("--from", "hf", "--to", "openai", hf_dir, str(tmp_path / "a"))
    assert "No space left on device" in fails("--from", "openai", "--to", "hf", openai_dir, str(tmp_path / "b"))
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError):  # into folders it makes: they go too, as the export's (paths.new_folder)
        convert(openai_dir, str(tmp_path / "new" / "deeper" / "c"), "openai", "hf")
    assert os.listdir(tmp_path) == []


def test_a_full_disk_is_named_whatever_the_writer_raises(openai_dir, hf_dir, tmp_path, monkeypatch):
    """What safetensors and TensorFlow raise on a full disk (their words, seen on a full tmpfs)
    ends in the line that says so, not a traceback or "out of memory"."""
    import saving
    import safetensors.numpy
    from safetensors import SafetensorError

    def safetensors_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def tensorflow_full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2_dtypes_1_device_/job:"
                                               "localhost/replica:0/task:0/device:CPU:0}} /x/model.ckpt.data-00000-of-"
                                               "00001.tempstate1; No space left on device [Op:SaveV2]")
    monkeypatch.setattr(saving, "write_tensors", tensorflow_full)
    monkeypatch.setattr(safetensors.numpy, "save_file", safetensors_full)
    full = (": the disk that holds {} is full (No space left on device): free some space, or choose a destination "
            "on another disk").format(tmp_path)
    dst = str(tmp_path / "a")
    assert fails("--from", "openai", "--to", "hf", openai_dir, dst) == f"error: cannot write {dst}{full}"
    assert fails("--from", "hf", "--to", "openai", hf_dir, dst) == f"error: cannot write {dst}{full}"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("words, values", [
    (["--from", "hf", "--to", "openai", "SRC", "DST"], {"from_": "hf", "to": "openai", "src": "SRC", "dst": "DST"}),
    (["SRC", "DST", "--from=openai", "--to=hf"], {"from_": "openai", "to": "hf", "src": "SRC", "dst": "DST"}),
    (["-f", "hf", "-t", "openai"], {"from_": "hf", "to": "openai"}),
])
def test_from_is_the_flag_of_from_(words, values):
    assert cli.read_flags(convert_checkpoint.convert_checkpoint, words) == values


def test_a_flag_without_its_value_is_named_as_typed():
    with pytest.raises(cli.UsageError, match="^--from needs a value: --from VALUE$"):
        cli.read_flags(convert_checkpoint.convert_checkpoint, ["--from"])


def test_the_script_as_the_issue_spells_it(hf_dir, tmp_path):
    """Both directions through the script itself: status 0 and a line; a bad input: status 1."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, SCRIPT, "--from", "hf", "--to", "openai", hf_dir, str(tmp_path / "o")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith(f"wrote {tmp_path / 'o'}: OpenAI format"), result.stderr
    result = subprocess.run([sys.executable, SCRIPT, "--from", "hf", "--to", "openai", hf_dir, str(tmp_path / "o")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert (result.returncode, result.stdout) == (1, "") and result.stderr.count("\n") == 1, result.stderr
    assert "exists" in result.stderr


# --- Equivalence with the NumPy reference ------------------------------------------------------

def test_reference_logprobs_are_the_originals_from_the_converted_folders(openai_dir, hf_dir, tmp_path):
    tokens = np.random.RandomState(3).randint(0, 50257, 20)
    hparams, original = reference.load(openai_dir)
    expected = reference.logprobs(hparams, original, tokens)
    convert(hf_dir, str(tmp_path / "back"), "hf", "openai")
    np.testing.assert_array_equal(reference.logprobs(*reference.load(str(tmp_path / "back")), tokens), expected)
    # the exported file read with a mapping written here, not convert_checkpoint's
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    by_hand = {"model/wte": tensors["transformer.wte.weight"], "model/wpe": tensors["transformer.wpe.weight"],
               "model/ln_f/g": tensors["transformer.ln_f.weight"], "model/ln_f/b": tensors["transformer.ln_f.bias"]}
    for i in range(hparams["n_layer"]):
        for scope in ("ln_1", "ln_2", "attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            hf = f"transformer.h.{i}.{scope.replace('/', '.')}"
            is_norm = scope.startswith("ln")
            weight = tensors[f"{hf}.weight"]
            by_hand[f"model/h{i}/{scope}/{'g' if is_norm else 'w'}"] = weight if is_norm else weight[None]
            by_hand[f"model/h{i}/{scope}/b"] = tensors[f"{hf}.bias"]
    by_hand = {name: value.astype(np.float64) for name, value in by_hand.items()}
    np.testing.assert_array_equal(reference.logprobs(hparams, by_hand, tokens), expected)
