#!/usr/bin/env python3
"""Holds src/convert_checkpoint.py to Hugging Face's transformers (the peer), both ways:

    python bench/check_hf.py --peer ~/.cache/gpt2-peer-venv/bin/python [--shapes tiny,distilgpt2]

- openai -> hf: a random OpenAI-format model is exported; the peer loads the folder with
  `GPT2LMHeadModel.from_pretrained` (no missing, unexpected or mismatched keys allowed) and its
  log-probabilities on random tokens are held to ours (model.py) on the original folder, and
  to its own on the original checkpoint (../shared/peer/hf_generate.py, which reads it with
  transformers' TF converter): the same weights, so the same bits.
- hf -> openai: the peer makes a random GPT2LMHeadModel and saves it with its own
  `save_pretrained`, in float32 and sharded, and in bfloat16; each is imported, and model.py's
  log-probabilities on the imported folder are held to the peer's on the saved model.

One JSON line per check, with the largest difference of log-probabilities (nats). The peer runs
in its own Python (torch + transformers), never in CI. GPT-2's vocabulary (encoder.json,
vocab.bpe) comes from GPT2_VOCAB_DIR, else ../shared/gpt2-vocab beside the repository.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import checkpoints  # noqa: E402
import convert_checkpoint  # noqa: E402
import model  # noqa: E402

SHAPES = {"tiny": checkpoints.TINY,
          "distilgpt2": dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=6),
          **checkpoints.OFFICIAL}
PEER_SCRIPT = os.path.join(ROOT, "..", "shared", "peer", "hf_generate.py")  # reads OpenAI's checkpoints
TOLERANCE = 1e-4  # nats: float32 sums in another order (TensorFlow vs PyTorch)

PEER = r'''
import json, sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
job = json.loads(sys.argv[1])
out = {}
if job["do"] == "make":  # a random model with every weight drawn (biases and norms too), saved
    torch.manual_seed(job["seed"])
    m = GPT2LMHeadModel(GPT2Config(**job["config"]))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    m.to(getattr(torch, job["dtype"])).save_pretrained(job["dir"], safe_serialization=True,
                                                        max_shard_size=job["max_shard_size"])
m, info = GPT2LMHeadModel.from_pretrained(job["dir"], output_loading_info=True, torch_dtype=torch.float32)
out["loading"] = {key: [str(k) for k in value] for key, value in info.items()}
out["files"] = sorted(__import__("os").listdir(job["dir"]))
toks = torch.tensor([job["tokens"]])
with torch.no_grad():
    lp = torch.log_softmax(m.eval()(toks).logits.double(), -1)[0, :-1]
out["logprobs"] = lp.gather(-1, toks[0, 1:, None])[:, 0].tolist()
print(json.dumps(out))
'''


def peer(python, **job):
    """The peer's answer (a dict) to one job."""
    result = subprocess.run([python, "-c", PEER, json.dumps(job)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"the peer failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def our_logprobs(path, tokens):
    """model.py's log-probability of tokens[1:] under the OpenAI-format folder `path`."""
    hparams = model.load_hparams(path)
    params = model.load_params(model.find_checkpoint(path), hparams)
    logits = model.model(params, hparams, tf.constant([tokens]))["logits"][0, :-1]
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float64))
    return tf.gather(logp, tokens[1:], batch_dims=1).numpy()


def report(check, shape, ours, theirs, loading=None, files=None):
    """Prints one check's JSON line; returns whether it passed."""
    difference = float(np.abs(np.asarray(ours) - np.asarray(theirs)).max())
    clean = loading is None or not any(loading.get(key) for key in ("missing_keys", "unexpected_keys",
                                                                     "mismatched_keys", "error_msgs"))
    passed = clean and difference <= TOLERANCE
    line = {"check": check, "shape": shape, "max_logprob_difference": difference, "passed": passed}
    if loading is not None:
        line["from_pretrained"] = loading
    if files is not None:
        line["files"] = files
    print(json.dumps(line), flush=True)
    return passed


def check_export(python, shape, folder, tokens, vocab_dir):
    """openai -> hf, loaded by the peer."""
    source = checkpoints.write_checkpoint(os.path.join(folder, "openai"), SHAPES[shape], vocab_dir, seed=1)
    exported = os.path.join(folder, "hf")
    convert_checkpoint.convert(source, exported, "openai", "hf")
    answer = peer(python, do="load", dir=exported, tokens=tokens)
    # transformers reading the original TF checkpoint itself: the same weights give the same bits
    result = subprocess.run([python, PEER_SCRIPT, source, "logprobs", json.dumps(tokens)], capture_output=True,
                            text=True, check=True)
    from_checkpoint = json.loads(result.stdout.splitlines()[-1])["logprobs"]
    same = float(np.abs(np.asarray(from_checkpoint) - answer["logprobs"]).max())
    print(json.dumps({"check": "openai->hf, the peer on the export vs on the original checkpoint", "shape": shape,
                      "max_logprob_difference": same, "passed": same == 0}), flush=True)
    return same == 0 and report("openai->hf", shape, our_logprobs(source, tokens), answer["logprobs"],
                                answer["loading"], sorted(os.listdir(exported)))


def check_import(python, shape, folder, tokens, vocab_dir, dtype, max_shard_size):
    """hf (saved by transformers) -> openai, run by model.py."""
    hparams = SHAPES[shape]
    config = dict(vocab_size=hparams["n_vocab"], n_positions=hparams["n_ctx"], n_embd=hparams["n_embd"],
                  n_head=hparams["n_head"], n_layer=hparams["n_layer"])
    saved = os.path.join(folder, f"hf-{dtype}")
    answer = peer(python, do="make", dir=saved, config=config, seed=2, dtype=dtype, tokens=tokens,
                  max_shard_size=max_shard_size)
    for openai_name, hf_name in convert_checkpoint.TOKENIZER.items():
        shutil.copyfile(os.path.join(vocab_dir, openai_name), os.path.join(saved, hf_name))
    imported = os.path.join(folder, f"openai-{dtype}")
    convert_checkpoint.convert(saved, imported, "hf", "openai")
    return report(f"hf({dtype}, max_shard_size {max_shard_size})->openai", shape,
                  our_logprobs(imported, tokens), answer["logprobs"], files=answer["files"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", metavar="PYTHON", required=True, help="the peer venv's python")
    parser.add_argument("--shapes", default="tiny,distilgpt2", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--length", type=int, default=48, help="tokens scored")
    args = parser.parse_args()
    try:
        vocab_dir = checkpoints.find_vocab_dir(os.environ)
    except ValueError as e:
        sys.exit(f"error: {e}")
    passed = True
    for shape in args.shapes.split(","):
        tokens = np.random.RandomState(0).randint(0, SHAPES[shape]["n_vocab"], args.length).tolist()
        with tempfile.TemporaryDirectory() as folder:
            passed &= check_export(args.peer, shape, folder, tokens, vocab_dir)
            size = sum(np.prod(s) for s in model.checkpoint_shapes(model.HParams(**SHAPES[shape])).values()) * 4
            passed &= check_import(args.peer, shape, folder, tokens, vocab_dir, "float32",
                                   f"{max(1, size // 3 // 1000)}KB")
            passed &= check_import(args.peer, shape, folder, tokens, vocab_dir, "bfloat16", "10GB")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
