#!/usr/bin/env python3
"""Converts a GPT-2 model folder between OpenAI's format and Hugging Face's, both ways.

    python3 src/convert_checkpoint.py --from hf --to openai ~/hf/distilgpt2 models/distilgpt2
    python3 src/convert_checkpoint.py --from openai --to hf checkpoint/run1 ~/hf/run1

An OpenAI-format folder is what the scripts read: `hparams.json`, `encoder.json`, `vocab.bpe`
and a TF1 checkpoint (`checkpoint`, `model.ckpt.index`, `model.ckpt.data-*`) with OpenAI's
variable names and shapes (a run folder of train.py is one: its `checkpoint` names the latest
`model-STEP`). A Hugging Face folder is `config.json` (GPT2Config's fields),
`model.safetensors` (or `model.safetensors.index.json` and the shards it lists), `vocab.json`,
`merges.txt` and `generation_config.json`; transformers' `GPT2LMHeadModel.from_pretrained`
reads the ones written here.

Any model with GPT-2's architecture converts, whatever its size (distilgpt2, fine-tunes): the
weights are the same numbers under other names, conv1d weights [1, nx, nf] becoming Conv1D's
[nx, nf]. Weights are written in float32; float16 and bfloat16 ones are widened to float32,
which is exact, so a round trip gives back every weight bit for bit. A model that computes
something else (another architecture, activation, norm epsilon or attention scaling, an output
layer that is not the token embedding) is refused with a line saying what differs. The
destination is written in a temporary folder beside it and renamed when complete: it is whole
or absent.
"""
import json
import math
import os
import re
import shutil
import struct

from tqdm import tqdm

import cli
import paths

FORMATS = ("openai", "hf")
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
TOKENIZER = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}  # OpenAI's file: Hugging Face's
OPENAI_FILES = ("hparams.json", *TOKENIZER)
PREFIX = "transformer."  # GPT2LMHeadModel's names for GPT2Model's weights; some files leave it out
BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # older files' causal masks: constants, not weights
FLOAT_TYPES = ("F32", "F16", "BF16")  # safetensors' names of the dtypes widened exactly to float32
END_OF_TEXT = "<|endoftext|>"

# GPT2Config's fields that change what the model computes: (the value when absent, the values
# that compute what model.py does). reorder_and_upcast_attn is not here: it changes the
# precision of attention's scores, which model.py computes in float32, not the function.
GPT2_MATH = {
    "model_type": (None, ("gpt2",)),
    "activation_function": ("gelu_new", ("gelu_new", "gelu_pytorch_tanh")),  # both the tanh GELU
    "layer_norm_epsilon": (1e-5, (1e-5,)),
    "scale_attn_weights": (True, (True,)),
    "scale_attn_by_inverse_layer_idx": (False, (False,)),
    "add_cross_attention": (False, (False,)),
}
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")  # weights of GPT-2 and nothing else


# --- Names and shapes ---------------------------------------------------------------------------

def hf_name(name):
    """OpenAI's checkpoint name -> Hugging Face's, without the `transformer.` prefix:
    `model/h3/attn/c_attn/w` -> `h.3.attn.c_attn.weight`, `model/wte` -> `wte.weight`."""
    *scopes, leaf = re.sub(r"^model/h(\d+)/", r"h/\1/", name).removeprefix("model/").split("/")
    if not scopes:  # wte, wpe
        return f"{leaf}.weight"
    return ".".join(scopes + [{"w": "weight", "g": "weight", "b": "bias"}[leaf]])


def hf_shapes(hparams):
    """Every weight of a Hugging Face GPT-2 (names without the prefix) -> (OpenAI's name, shape):
    conv1d weights are [nx, nf], OpenAI's [1, nx, nf] without the 1."""
    import model
    return {hf_name(name): (name, shape[1:] if len(shape) == 3 else shape)
            for name, shape in model.checkpoint_shapes(hparams).items()}


# --- config.json --------------------------------------------------------------------------------

def config_differences(config):
    """What in a config.json makes a model compute other than GPT-2: ['activation_function is
    'relu' (GPT-2: gelu_new)', ...]; [] for GPT-2."""
    differences = []
    for field, (default, allowed) in GPT2_MATH.items():
        value = config.get(field, default)
        if value not in allowed or type(value) is not type(allowed[0]):
            differences.append(f"{field} is {json.dumps(value)} (GPT-2: {json.dumps(allowed[0])})")
    n_inner, n_embd = config.get("n_inner"), config.get("n_embd", 768)
    if n_inner is not None and (not isinstance(n_embd, int) or n_inner != 4 * n_embd):
        differences.append(f"n_inner is {json.dumps(n_inner)} (GPT-2: null or 4 * n_embd)")
    architectures = config.get("architectures") or []
    names = [architectures] if isinstance(architectures, str) else architectures  # a list, as transformers writes it
    if not isinstance(names, list) or any(name not in ARCHITECTURES for name in names):
        differences.append(f"architectures is {json.dumps(architectures)} (GPT-2: {json.dumps(ARCHITECTURES[:1])})")
    return differences


def hparams_from_config(config, filename):
    """The HParams of a Hugging Face GPT-2's config (GPT2Config's defaults for absent fields);
    ValueError naming what differs from GPT-2's architecture."""
    import model
    if not isinstance(config, dict):
        raise ValueError(f"{filename} is not a JSON object: it should hold GPT2Config's fields")
    differences = config_differences(config)
    if differences:
        raise ValueError(f"{filename} is not GPT-2's architecture, which is all this converts: "
                         f"{'; '.join(differences)}")
    try:
        return model.HParams(n_vocab=config.get("vocab_size", 50257),
                             n_ctx=config.get("n_positions", config.get("n_ctx", 1024)),
                             n_embd=config.get("n_embd", 768), n_head=config.get("n_head", 12),
                             n_layer=config.get("n_layer", 12))
    except ValueError as e:
        raise ValueError(f"{filename} holds no usable GPT-2 shape ({e})") from None


def config_from_hparams(hparams, end_token):
    """The config.json of GPT2LMHeadModel for `hparams`, with transformers' defaults for the
    fields that only training reads (dropout, initialisation)."""
    tokens = {} if end_token is None else {"bos_token_id": end_token, "eos_token_id": end_token}
    return {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
            **tokens, "embd_pdrop": 0.1, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
            "model_type": "gpt2", "n_ctx": hparams.n_ctx, "n_embd": hparams.n_embd, "n_head": hparams.n_head,
            "n_inner": None, "n_layer": hparams.n_layer, "n_positions": hparams.n_ctx,
            "reorder_and_upcast_attn": False, "resid_pdrop": 0.1, "scale_attn_by_inverse_layer_idx": False,
            "scale_attn_weights": True, "tie_word_embeddings": True, "torch_dtype": "float32",
            "use_cache": True, "vocab_size": hparams.n_vocab}


def end_token(encoder_json):
    """The id of <|endoftext|> in an encoder.json (50256 in GPT-2's), or None without one."""
    encoder = read_json(encoder_json)
    token = encoder.get(END_OF_TEXT) if isinstance(encoder, dict) else None
    return token if isinstance(token, int) else None


# --- Reading Hugging Face's files -------------------------------------------------------------

def read_json(filename):
    """The JSON in `filename`; ValueError naming the file when it is not JSON."""
    try:
        with open(filename, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{filename} is not valid JSON ({type(e).__name__}): download it again") from None


def weight_files(src):
    """The .safetensors files of a Hugging Face folder: model.safetensors, or the shards its
    index lists. FileNotFoundError saying what is missing."""
    if os.path.isfile(os.path.join(src, WEIGHTS)):
        return [os.path.join(src, WEIGHTS)]
    if not os.path.isfile(os.path.join(src, INDEX)):
        other = [name for name in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
                 if os.path.isfile(os.path.join(src, name))]
        fix = (f"; it has {other[0]}, which this does not read: save the model with safetensors "
               "(transformers' save_pretrained(DIR, safe_serialization=True))" if other else "")
        raise FileNotFoundError(f"no weights in {src}: it needs {WEIGHTS}, or {INDEX} and the shards it lists{fix}")
    index = read_json(os.path.join(src, INDEX))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{os.path.join(src, INDEX)} has no weight_map of file names: download it again")
    elsewhere = [name for name in weight_map.values() if os.path.basename(name) != name or name in ("", ".", "..")]
    if elsewhere:
        raise ValueError(f"{os.path.join(src, INDEX)} lists {elsewhere[0]!r}, not the name of a file beside it: "
                         "the shards must lie in the folder, listed by their file names")
    shards = [os.path.join(src, name) for name in sorted(set(weight_map.values()))]
    missing = [path for path in shards if not os.path.isfile(path)]
    if missing:
        problem = "is not a file" if os.path.exists(missing[0]) else "is missing"
        raise FileNotFoundError(f"{missing[0]}, which {INDEX} lists, {problem}: download it")
    return shards


def read_safetensors(path):
    """{name: float32 array} of the weights in one .safetensors file (the causal-mask buffers
    of older files left out); F16 and BF16 weights are widened to float32, exactly."""
    import numpy as np
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()
                      if not BUFFER.fullmatch(name.removeprefix(PREFIX))}
            check_dtypes(dtypes, path)
            tensors = {name: f.get_tensor(name) for name, dtype in dtypes.items() if dtype != "BF16"}
    except SafetensorError as e:
        raise ValueError(f"{path} is not a whole safetensors file ({e}): download it again") from None
    tensors.update(read_bfloat16(path, [name for name, dtype in dtypes.items() if dtype == "BF16"]))
    return {name: np.asarray(value, np.float32) for name, value in tensors.items()}


def check_dtypes(dtypes, path):
    """ValueError unless every weight is F32, F16 or BF16 (what float32 holds exactly)."""
    other = {name: dtype for name, dtype in dtypes.items() if dtype not in FLOAT_TYPES}
    if other:
        name = next(iter(other))
        raise ValueError(f"{path}: {name} is {other[name]}; only {', '.join(FLOAT_TYPES)} weights convert "
                         "(to float32, exactly)")


def read_bfloat16(path, names):
    """{name: float32 array} of the BF16 tensors `names` of a checked .safetensors file, which
    safetensors' NumPy API cannot give (NumPy has no bfloat16): a bfloat16 is the top half of
    a float32, so the widening is a 16-bit shift. The file is a little-endian u64 header size,
    the JSON header, then the data at each tensor's data_offsets."""
    import numpy as np
    tensors = {}
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        for name in names:
            start, end = header[name]["data_offsets"]
            f.seek(8 + size + start)
            bits = np.frombuffer(f.read(end - start), "<u2").astype(np.uint32) << 16
            tensors[name] = bits.view(np.float32).reshape(header[name]["shape"])
    return tensors


def read_weights(src):
    """{name without the prefix: float32 array} of every .safetensors file of a Hugging Face
    folder; ValueError for a weight found twice."""
    weights = {}
    for path in weight_files(src):
        for name, value in read_safetensors(path).items():
            name = name.removeprefix(PREFIX)
            if name in weights:
                raise ValueError(f"{src} holds {name} twice (with and without {PREFIX!r}, or in two shards): "
                                 "keep one")
            weights[name] = value
    return weights


def openai_values(weights, hparams, tied, where):
    """Hugging Face's weights -> {OpenAI's name: array in the checkpoint's shape}, after
    checking them against config.json's hparams and the output layer against the embedding."""
    import model
    weights = dict(weights)
    head = weights.pop("lm_head.weight", None)
    layers = {int(m.group(1)) for m in map(re.compile(r"h\.(\d+)\.").match, weights) if m}
    if len(layers) != hparams.n_layer:
        raise ValueError(f"{where} does not match config.json: n_layer is {hparams.n_layer}, "
                         f"the weights have {len(layers)} layers")
    expected = hf_shapes(hparams)
    problems = [f"missing {name} {shape}" for name, (_, shape) in expected.items() if name not in weights]
    problems += [f"unexpected {name} {list(weights[name].shape)}" for name in weights if name not in expected]
    problems += [f"{name} is {list(weights[name].shape)}, config.json makes it {shape}"
                 for name, (_, shape) in expected.items() if name in weights and list(weights[name].shape) != shape]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise ValueError(f"{where} does not match config.json: {shown}")
    check_tied(head, weights["wte.weight"], tied, where)
    shapes = model.checkpoint_shapes(hparams)
    return {openai: weights[name].reshape(shapes[openai]) for name, (openai, _) in expected.items()}


def check_tied(head, wte, tied, where):
    """ValueError unless GPT-2's output layer is its token embedding: lm_head.weight, where a
    file has one, equal to wte.weight (NaN where it has NaN); and none only where config.json
    ties them."""
    import numpy as np
    same = head is not None and head.shape == wte.shape and np.array_equal(head, wte, equal_nan=True)
    if not same and (head is not None or not tied):
        nan = "; lm_head.weight holds NaN" if head is not None and np.isnan(head).any() else ""
        raise ValueError(f"{where}: the output layer (lm_head.weight) is not the token embedding (wte.weight){nan}; "
                         "GPT-2 ties them, and a model with untied output weights does not convert")


def read_hf(src):
    """(hparams, {OpenAI's name: float32 array}) of a Hugging Face GPT-2 folder."""
    config_file = os.path.join(src, "config.json")
    config = read_json(config_file)
    hparams = hparams_from_config(config, config_file)
    tied = config.get("tie_word_embeddings", True) is not False
    return hparams, openai_values(read_weights(src), hparams, tied, src)


# --- Reading OpenAI's files ---------------------------------------------------------------------

def read_openai(src):
    """(hparams, {OpenAI's name: float32 array}) of an OpenAI-format folder (or a run folder of
    train.py: its latest checkpoint), checked as the scripts check it."""
    import numpy as np
    import model
    hparams = model.load_hparams(src)
    values = model.read_checkpoint(model.find_checkpoint(src), hparams)
    return hparams, {name: np.asarray(value, np.float32) for name, value in values.items()}


def check_folder(src, source):
    """FileNotFoundError unless `src` has the files of a folder of format `source`, the weights
    apart (reading checks those): its config, and the tokenizer's files."""
    configs = {"hf": "config.json", "openai": "hparams.json"}
    kinds = {"hf": "a Hugging Face", "openai": "an OpenAI-format"}
    other = "openai" if source == "hf" else "hf"
    if not os.path.isfile(os.path.join(src, configs[source])):
        hint = (f"; it looks like {kinds[other]} folder: use --from {other}"
                if os.path.isfile(os.path.join(src, configs[other])) else "")
        raise FileNotFoundError(f"{src} has no {configs[source]}: it is not {kinds[source]} model folder{hint}")
    tokenizer_files(src, TOKENIZER.values() if source == "hf" else TOKENIZER)


def tokenizer_files(src, names):
    """The paths of `names` in src; FileNotFoundError naming those missing."""
    missing = [name for name in names if not os.path.isfile(os.path.join(src, name))]
    if missing:
        raise FileNotFoundError(f"{src} has no {' or '.join(missing)}: copy GPT-2's tokenizer files there "
                                "(the model's own, if it has another vocabulary)")
    return [os.path.join(src, name) for name in names]


def check_tokenizer(vocabulary_path, merges_path):
    """The vocabulary {token: id} of the JSON file at `vocabulary_path`; ValueError unless it maps
    tokens to ids, as encoder.json and vocab.json do, and the file at `merges_path` lists BPE
    merges of its tokens, as vocab.bpe and merges.txt do: copied as they are, broken ones would
    make a folder no script can read."""
    import encoder
    vocabulary = read_json(vocabulary_path)
    if not isinstance(vocabulary, dict) or not all(isinstance(i, int) for i in vocabulary.values()):
        raise ValueError(f"{vocabulary_path} is not a vocabulary (a JSON object of token: id): copy the model's own "
                         "there")
    encoder.read_merges(merges_path, vocabulary, fix="copy the model's own there")
    return vocabulary


def check_ids(vocabulary_path, vocabulary, n_vocab):
    """ValueError unless each id of `vocabulary`, the file at `vocabulary_path` as
    `check_tokenizer` read it, is one of the model's n_vocab token embeddings: converted, one
    past them failed in every script."""
    ids = list(vocabulary.values())
    if ids and not 0 <= min(ids) <= max(ids) < n_vocab:
        raise ValueError(f"{vocabulary_path} has token ids from {min(ids)} to {max(ids)}, but the model has {n_vocab} "
                         f"token embeddings (ids 0 to {n_vocab - 1}): the vocabulary is another model's; copy the "
                         "model's own there")


# --- Writing ------------------------------------------------------------------------------------

def write_hf(folder, hparams, values, src):
    """Writes a Hugging Face folder for the weights `values` (OpenAI's names), with the tokenizer
    files of the OpenAI-format folder `src`. No lm_head.weight: GPT2LMHeadModel ties it to
    wte.weight, and its own save_pretrained leaves it out too."""
    import numpy as np
    from safetensors.numpy import save_file
    encoder_json, vocab_bpe = tokenizer_files(src, TOKENIZER)
    tensors = {PREFIX + name: np.ascontiguousarray(values[openai].reshape(shape), np.float32)
               for name, (openai, shape) in hf_shapes(hparams).items()}
    save_file(tensors, os.path.join(folder, WEIGHTS), metadata={"format": "pt"})  # transformers wants "pt"
    token = end_token(encoder_json)
    write_json(os.path.join(folder, "config.json"), config_from_hparams(hparams, token))
    write_json(os.path.join(folder, "generation_config.json"),
               {} if token is None else {"bos_token_id": token, "eos_token_id": token})
    shutil.copyfile(encoder_json, os.path.join(folder, TOKENIZER["encoder.json"]))
    shutil.copyfile(vocab_bpe, os.path.join(folder, TOKENIZER["vocab.bpe"]))


def write_openai(folder, hparams, values, src):
    """Writes an OpenAI-format folder for the weights `values`, with the tokenizer files of the
    Hugging Face folder `src`: a name-based TF1 checkpoint `model.ckpt`, as OpenAI's were."""
    import dataclasses
    import saving
    vocab_json, merges_txt = tokenizer_files(src, TOKENIZER.values())
    saving.write_tensors(os.path.join(folder, "model.ckpt"), values)
    with open(os.path.join(folder, "checkpoint"), "w", encoding="utf-8") as f:
        f.write('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')
    write_json(os.path.join(folder, "hparams.json"), dataclasses.asdict(hparams))
    shutil.copyfile(vocab_json, os.path.join(folder, "encoder.json"))
    shutil.copyfile(merges_txt, os.path.join(folder, "vocab.bpe"))


def write_json(filename, value):
    """`value` as indented JSON, keys in the order given, ending with a newline."""
    with open(filename, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=2) + "\n")


# --- The conversion -----------------------------------------------------------------------------

def convert(src, dst, source, target):
    """Converts the model folder `src` in format `source` ("openai" or "hf") to a new folder
    `dst` in format `target`; returns the hparams. Everything is read and checked before
    anything is written."""
    for name, value in (("from_", source), ("to", target)):
        if value not in FORMATS:
            raise ValueError(f"{cli.flag(name)} must be openai or hf. Received: {value!r}")
    if source == target:
        raise ValueError(f"--from and --to are both {source}: to copy a folder, use cp -r")
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src} is not a folder: give the model's folder")
    paths.check_destination(dst)  # before the reading, which can take a while
    check_folder(src, source)
    vocabulary_path, merges_path = tokenizer_files(src, TOKENIZER.values() if source == "hf" else TOKENIZER)
    vocabulary = check_tokenizer(vocabulary_path, merges_path)
    with tqdm(total=2, desc="converting", unit="stage", disable=None) as bar:  # 1558M: ~5 s, then ~30 s
        bar.set_postfix_str(f"reading {src}")
        hparams, values = read_hf(src) if source == "hf" else read_openai(src)  # n_vocab checked against the weights
        check_ids(vocabulary_path, vocabulary, hparams.n_vocab)
        bar.update(1)
        bar.set_postfix_str(f"writing {dst}")
        with paths.new_folder(dst) as folder:
            write_folder(write_openai if target == "openai" else write_hf, folder, dst, hparams, values, src)
        bar.update(1)
    return hparams


def write_folder(writer, folder, dst, hparams, values, src):
    """writer(folder, hparams, values, src), its failures turned into an OSError naming `dst`:
    safetensors and TensorFlow raise errors of their own (a full disk is a ResourceExhaustedError,
    "out of memory" to cli.main), which would end in a traceback or a wrong line."""
    import tensorflow as tf
    from safetensors import SafetensorError
    try:
        writer(folder, hparams, values, src)
    except (OSError, SafetensorError, tf.errors.OpError) as e:
        text = e.strerror if isinstance(e, OSError) and e.strerror else getattr(e, "message", str(e))
        if paths.is_disk_full(e):
            raise OSError(f"cannot write {dst}: the disk that holds {os.path.dirname(os.path.abspath(dst))} is "
                          "full (No space left on device): free some space, or choose a destination on another "
                          "disk") from None
        raise OSError(f"cannot write {dst} ({text.strip().splitlines()[-1]})") from None


def convert_checkpoint(src=None, dst=None, from_=None, to=None):
    """Converts a GPT-2 model folder between OpenAI's format and Hugging Face's

    :src : String, the model folder to read: OpenAI's (hparams.json, a checkpoint, encoder.json,
     vocab.bpe; a train.py run folder too) or Hugging Face's (config.json, model.safetensors or
     sharded safetensors with their index, vocab.json, merges.txt)
    :dst : String, the folder to write; it must not exist. It appears only once complete
    :from_ : String, written --from: the format of SRC, openai or hf
    :to : String, the format to write, hf or openai
    """
    if src is None or dst is None:
        raise ValueError("give the folders: convert_checkpoint.py --from hf --to openai SRC DST")
    for name, value in (("from_", from_), ("to", to)):
        if value is None:
            raise ValueError(f"{cli.flag(name)} is required: {cli.flag(name)} openai or {cli.flag(name)} hf "
                             "(convert_checkpoint.py --from hf --to openai SRC DST)")
    src, dst = (os.path.expanduser(str(path)) for path in (src, dst))
    hparams = convert(src, dst, from_, to)
    n_weights = sum(math.prod(shape) for _, shape in hf_shapes(hparams).values())
    print(f"wrote {dst}: {'Hugging Face' if to == 'hf' else 'OpenAI'} format, {hparams.n_layer} layers of "
          f"width {hparams.n_embd}, {n_weights:,} float32 weights")


if __name__ == "__main__":
    cli.main(convert_checkpoint)
