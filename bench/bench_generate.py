#!/usr/bin/env python3
"""Times generation: one JSON line per measurement, and the peers' beside it with --peer (Hugging
Face's PyTorch GPT-2) and --llamacpp (llama.cpp on a GGUF of the same weights).

    python bench/bench_generate.py --batch_size 8 --dtype bfloat16 --peer ~/.cache/gpt2-peer-venv/bin/python
    python bench/bench_generate.py --batch_size 8 --llamacpp ~/.cache/gpt2-llamacpp/gguf/124M-f32.gguf

The model is read from --models_dir/--model_name; for the four official names a checkpoint of
that shape with random weights is written there first if none is present (speed does not
depend on the weights, but top-p's on how spread out they make the distribution: see
--temperature). The whole generate call (prefill, then new_tokens sampled with the cache and
top-k 40, or --top_k, --top_p and --temperature) is timed after a warm-up; `prefill` times a call
making one token, and `decode_tokens_per_s` is the speed after the prompt is read (the
difference); `peak_memory` is the process's peak resident memory up to then. With --top_p,
the nucleus's sizes and the share of rows whose threshold the search decided
(`fast.top_p_threshold`; the others are sorted) come with it.
"""
import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # as the scripts start (GLIBC_TUNABLES= python bench/... to time without)
    import cli
    cli.restart_with_huge_pages()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import checkpoints  # noqa: E402
import cli  # noqa: E402
import fast  # noqa: E402
import model  # noqa: E402
import sample  # noqa: E402


def ensure_model(models_dir, model_name):
    path = os.path.join(models_dir, model_name)
    if not os.path.isfile(os.path.join(path, "checkpoint")):
        if model_name not in checkpoints.OFFICIAL:
            sys.exit(f"error: no model at {path}, and {model_name!r} is not one of {', '.join(checkpoints.OFFICIAL)}")
        print(f"writing a {model_name}-shaped checkpoint with random weights to {path}", file=sys.stderr)
        checkpoints.write_checkpoint(path, checkpoints.OFFICIAL[model_name], os.environ.get("GPT2_VOCAB_DIR"))
    return path


# --plain NAME or --alternate NAME for one of these turns that field of fast.Choices off.
CHOICES = ("fused_matmuls", "inplace_cache", "float32_attention", "growing_cache", "column_halves",
           "sampling_row_halves", "stacked_layers")


def choices(dtype, args, plain=()):
    """fast.choices_for(dtype) for --batch_size rows, less the CHOICES named in `plain`; XLA as
    --jit says."""
    chosen = fast.choices_for(dtype, rows=args.batch_size)
    jit = getattr(args, "jit", None)  # bench_generate.py's flag, not every benchmark's
    if jit is not None and jit != chosen.xla:
        chosen = fast.Choices(xla=jit)
    return dataclasses.replace(chosen, **{name: False for name in plain if name in CHOICES})


def cpu():
    """This machine's CPU: its model name and which bfloat16 flags it has (fast.BFLOAT16_FLAGS),
    and the settings of the process that change its speed."""
    with open("/proc/cpuinfo") as f:
        name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    return dict(cpu=name, bfloat16_flags=sorted(fast.BFLOAT16_FLAGS & fast.cpu_flags()),
                frozen_weights=os.environ.get(fast.FROZEN_WEIGHTS, ""),
                glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),  # glibc.malloc.hugetlb=1: huge pages
                intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads())  # 0: TensorFlow's default


DECODE_SIGNATURE = fast.decode_signature

# --plain NAME puts the plain TensorFlow way back in place of one of fast.py's speed-ups, to
# measure what it wins.
PLAIN = {
    "kth_largest": lambda: setattr(fast, "kth_largest", lambda logits, k: tf.math.top_k(logits, k).values[:, -1:]),
    "load_params": lambda: setattr(fast, "load_params", model.load_params),
    "first_argmax": lambda: setattr(fast, "first_argmax", lambda scores: tf.argmax(scores, -1, output_type=tf.int32)),
    "top_p_logits": lambda: setattr(fast, "top_p_logits", sample.top_p_logits),
    "draw_kept": lambda: setattr(fast, "draw_kept", sample.sample_logits),  # noise for every token id
    "draw_top_k": lambda: setattr(fast, "draw_top_k", lambda logits, keys, step, k: fast.draw_kept(
        sample.top_k_logits(logits, k), keys, step)),  # TensorFlow's top-k over each whole row, then a filtered row
    "any_batch": lambda: setattr(fast, "decode_signature",  # traced for any batch (no row halves)
                                 lambda hparams, dtype, batch_size, cache_dtype, **kw: DECODE_SIGNATURE(
                                     hparams, dtype, None, cache_dtype, **kw)),
    "block_function": lambda: setattr(fast, "block", fast.block.python_function),  # each layer traced inline
    "prompt_choices": lambda: setattr(fast, "prompt_choices", lambda choices: choices),  # the decode loop's kernels
    "xla": lambda: None,  # the decode loop without XLA (--alternate only)
    "same": lambda: None,  # nothing: both Samplers alike, the measure of the method's own error (--alternate only)
    **{name: lambda: None for name in CHOICES},  # that fast.Choices field off
    "frozen_weights": lambda: None,  # TF_ONEDNN_ASSUME_FROZEN_WEIGHTS left unset (--plain only: it is the process's)
    "single_threaded_ops": lambda: None,  # TensorFlow's threads as they are (--plain only: the process's)
    "transposed_wte": lambda: setattr(fast, "last_logits", lambda params, h, wte_t, zeros=None: tf.cast(tf.matmul(
        model.norm(h[:, -1], params["ln_f"]), params["wte"], transpose_b=True), tf.float32)),  # wte transposed in the matmul
}


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(path, args):
    dtype = cli.parse_dtype(args.dtype)
    hparams = model.load_hparams(path)
    chosen = choices(dtype, args, args.plain)
    start = time.perf_counter()
    # As the scripts load them, for peak_memory: laid out as the Sampler keeps them (top-p's
    # nucleus_stats reads them whole), and dropped once it has them.
    params = fast.load_params(model.find_checkpoint(path), hparams, dtype, chosen if args.top_p == 1 else None)
    load_seconds = time.perf_counter() - start
    sampler = fast.Sampler(params, hparams, top_k=args.top_k, top_p=args.top_p, choices=chosen)
    if args.top_p == 1:
        del params
    context = np.random.RandomState(0).randint(0, hparams.n_vocab, (args.batch_size, args.prompt_len))
    run = dict(seed=2, temperature=args.temperature)
    warm_up = timed(lambda: sampler.sample(context, 4, **run))  # traces and compiles
    seconds = min(timed(lambda: sampler.sample(context, args.new_tokens, **run)) for _ in range(args.repeats))
    prefill = min(timed(lambda: sampler.sample(context, 1, **run)) for _ in range(args.repeats))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes: loading, compiling and sampling
    common = dict(model_name=args.model_name, batch_size=args.batch_size, prompt_len=args.prompt_len, dtype=args.dtype,
                  top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                  choices=dataclasses.asdict(sampler.choices), plain=args.plain, **cpu())
    decode = args.batch_size * (args.new_tokens - 1) / (seconds - prefill)  # after the prompt is read
    yield dict(measure="generate", **common, new_tokens=args.new_tokens, seconds=seconds,
               tokens_per_s=args.batch_size * args.new_tokens / seconds, decode_tokens_per_s=decode,
               **(nucleus_stats(params, hparams, sampler.sample(context, args.new_tokens, **run), args)
                  if args.top_p < 1 else {}))
    yield dict(measure="load", model_name=args.model_name, dtype=args.dtype, seconds=load_seconds, plain=args.plain)
    yield dict(measure="warm_up", **common, new_tokens=4, seconds=warm_up)  # tracing and compiling, mostly
    yield dict(measure="prefill", **common, new_tokens=1, seconds=prefill,
               tokens_per_s=args.batch_size * args.prompt_len / prefill)
    yield dict(measure="peak_memory", **common, new_tokens=args.new_tokens, peak_rss_gb=peak / 1e9)


def nucleus_stats(params, hparams, tokens, args):
    """How the sample's steps went for top-p: the nucleus's size (median, 90th percentile) and
    the share of rows whose threshold `fast.top_p_threshold` decided (the others are sorted)."""
    logits = tf.cast(model.model(params, hparams, tokens)["logits"][:, args.prompt_len - 1:-1], tf.float32)
    steps = tf.reshape(tf.transpose(logits, [1, 0, 2]), [-1, args.batch_size, hparams.n_vocab])  # [step, batch, vocab]
    sizes, decided = [], []
    for step_logits in steps:
        kept = sample.top_k_logits(sample.with_temperature(step_logits, args.temperature), args.top_k)
        nucleus = sample.top_p_logits(kept, args.top_p) > kept.dtype.min  # [batch, vocab]
        sizes += list(tf.reduce_sum(tf.cast(nucleus, tf.int32), -1).numpy())
        decided += list(fast.top_p_threshold(kept, args.top_p)[1].numpy())
    return dict(nucleus_median=float(np.median(sizes)), nucleus_p90=float(np.percentile(sizes, 90)),
                decided_share=float(np.mean(decided)))


def alternate(path, args):
    """--alternate NAME: two Samplers in one process, fast.py's as it is and with NAME's plain
    way, called in turn --repeats times each: medians of tokens/s and their ratio, steadier than
    two processes on a shared machine."""
    dtype = cli.parse_dtype(args.dtype)
    hparams = model.load_hparams(path)
    prefix = model.find_checkpoint(path)
    if args.alternate == "load_params":
        loaders = {"fast": fast.load_params, "plain": model.load_params}
        seconds = {name: [timed(lambda: loader(prefix, hparams, dtype)) for _ in range(args.repeats)]
                   for name, loader in loaders.items()}
        return dict(measure="alternate", plain=args.alternate, seconds_fast=float(np.median(seconds["fast"])),
                    seconds_plain=float(np.median(seconds["plain"])))
    params = fast.load_params(prefix, hparams, dtype)
    context = np.random.RandomState(0).randint(0, hparams.n_vocab, (args.batch_size, args.prompt_len))
    first = first_sampler(params, hparams, choices(dtype, args), context)
    samplers = {}
    for name in ("fast", "plain"):  # each traced before the next is made: the plain way goes in between
        chosen = choices(dtype, args)
        if name == "plain":
            PLAIN[args.alternate]()
            chosen = choices(dtype, args, [args.alternate])
            if args.alternate == "xla":
                chosen = dataclasses.replace(chosen, xla=False)
        samplers[name] = fast.Sampler(params, hparams, top_k=args.top_k, top_p=args.top_p, choices=chosen)
        samplers[name].sample(context, 4, seed=1)
    fast_rate, plain_rate = in_turn(samplers, context, args).values()
    del first  # held while the two ran
    return dict(measure="alternate", plain=args.alternate, batch_size=args.batch_size, dtype=args.dtype,
                choices=dataclasses.asdict(samplers["fast"].choices), repeats=args.repeats,
                tokens_per_s_fast=fast_rate, tokens_per_s_plain=plain_rate, gain=fast_rate / plain_rate, **cpu())


def top_p_against_top_k(path, args):
    """--against_top_k: a Sampler with top-k 40 and one with --top_p alone, in one process,
    called in turn --repeats times each: medians of tokens/s, their ratio (the issue asks top-p
    for 0.9 or more), and the nucleus's sizes in the top-p sample."""
    dtype = cli.parse_dtype(args.dtype)
    hparams = model.load_hparams(path)
    params = fast.load_params(model.find_checkpoint(path), hparams, dtype)
    context = np.random.RandomState(0).randint(0, hparams.n_vocab, (args.batch_size, args.prompt_len))
    samplers = {"top_k": fast.Sampler(params, hparams, top_k=40, jit=args.jit),
                "top_p": fast.Sampler(params, hparams, top_k=0, top_p=args.top_p, jit=args.jit)}
    for sampler in samplers.values():
        sampler.sample(context, 4, seed=1)  # traces and compiles
    top_k_rate, top_p_rate = in_turn(samplers, context, args).values()
    tokens = samplers["top_p"].sample(context, args.new_tokens, seed=2, temperature=args.temperature)
    return dict(measure="top_p_against_top_k", top_p=args.top_p, temperature=args.temperature,
                batch_size=args.batch_size, dtype=args.dtype, repeats=args.repeats, tokens_per_s_top_k_40=top_k_rate,
                tokens_per_s_top_p=top_p_rate, ratio=top_p_rate / top_k_rate,
                **nucleus_stats(params, hparams, tokens, argparse.Namespace(**{**vars(args), "top_k": 0})))


def sampling_step(path, args):
    """--sampling_step: the sampling step alone (`fast.next_token` under XLA, top-k 40 and --top_p,
    and parts of them), on the logits of a top-p sample's steps: each in one compiled function
    over all of them, called in turn --repeats times; medians in ms a step."""
    tf.get_logger().setLevel("ERROR")  # five functions of one lambda's code: TensorFlow warns of retracing
    dtype = cli.parse_dtype(args.dtype)
    hparams = model.load_hparams(path)
    params = fast.load_params(model.find_checkpoint(path), hparams, dtype)
    context = np.random.RandomState(0).randint(0, hparams.n_vocab, (args.batch_size, args.prompt_len))
    sampler = fast.Sampler(params, hparams, top_k=0, top_p=args.top_p)
    tokens = sampler.sample(context, args.new_tokens, seed=2, temperature=args.temperature)
    logits = tf.cast(model.model(params, hparams, tokens)["logits"][:, args.prompt_len - 1:-1], tf.float32)
    steps = tf.transpose(logits, [1, 0, 2])  # [step, batch, vocab]
    keys = sample.sample_keys(2, 0, args.batch_size)
    t = args.temperature
    parts = {
        "top_k_40": lambda x, i: fast.next_token(x, keys, i, t, 40, 1.0, True),
        "top_p": lambda x, i: fast.next_token(x, keys, i, t, 0, args.top_p, True),
        "kth_largest": lambda x, i: fast.kth_largest(sample.with_temperature(x, t), 40)[:, 0],
        "top_p_threshold": lambda x, i: fast.top_p_threshold(sample.with_temperature(x, t), args.top_p)[0][:, 0],
        "draw": lambda x, i: fast.first_argmax(sample.with_temperature(x, t) + sample.draw_noise(
            keys, i, tf.shape(x)[1])),  # the noise and the argmax
    }
    compiled = {name: tf.function(lambda steps, part=part: tf.foldl(
        lambda total, i: total + tf.cast(part(tf.gather(steps, i), i), tf.float32), tf.range(tf.shape(steps)[0]),
        tf.zeros([args.batch_size])), jit_compile=True) for name, part in parts.items()}
    ms = {name: [] for name in parts}
    for _ in range(args.repeats + 1):  # the first round compiles
        for name, function in compiled.items():
            ms[name].append(1000 * timed(lambda: function(steps).numpy()) / len(steps))
    return dict(measure="sampling_step", batch_size=args.batch_size, dtype=args.dtype, top_p=args.top_p,
                temperature=t, steps=len(steps), **{f"ms_{name}": float(np.median(m[1:])) for name, m in ms.items()})


def first_sampler(params, hparams, chosen, context):
    """A process's first Sampler, with `chosen`, called once and never timed; hold it while the
    others run: of Samplers alike made in one process, the first ran ~4-5% slower than those
    made after it (2-8% a run, at batch 1 and 8; bench/README.md), which favoured the second
    Sampler of a comparison. `--alternate same` measures what is left: the noise."""
    sampler = fast.Sampler(params, hparams, top_k=40, choices=chosen)
    sampler.sample(context, 4, seed=1)
    return sampler


def in_turn(samplers, context, args):
    """{name: median tokens/s} of the samplers, each called once a round, --repeats rounds."""
    rates = {name: [] for name in samplers}
    for _ in range(args.repeats):
        for name, sampler in samplers.items():
            rates[name].append(args.batch_size * args.new_tokens / timed(
                lambda: sampler.sample(context, args.new_tokens, seed=2, temperature=args.temperature)))
    return {name: float(np.median(r)) for name, r in rates.items()}


def peer(python, path, args):
    out = subprocess.run([python, os.path.join(ROOT, "..", "shared", "peer", "hf_generate.py"), path, "bench",
                          str(args.batch_size), str(args.prompt_len), str(args.new_tokens)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def llamacpp(gguf, args):
    """llama.cpp's figures on `gguf` (bash ../shared/peer/llamacpp_setup.sh MODEL_DIR makes it):
    its new_tokens_per_s_incl_prompt is timed as ours is, the prompt's pass included (its tools
    time the model's passes, with no sampling)."""
    out = subprocess.run(["bash", os.path.join(ROOT, "..", "shared", "peer", "llamacpp_bench.sh"), gguf,
                          "--batch", str(args.batch_size), "--prompt", str(args.prompt_len),
                          "--new", str(args.new_tokens)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_arguments(parser, new_tokens=64, dtype="float32"):
    """The flags of a sampling benchmark (this one, profile_generate.py, bench_against.py): which
    model, in which dtype, and how many rows, prompt tokens and new tokens."""
    parser.add_argument("--model_name", default="124M")
    parser.add_argument("--models_dir", default=os.path.join(ROOT, "bench", "models"))
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=new_tokens)
    parser.add_argument("--dtype", default=dtype, choices=sorted(cli.DTYPES))


def load_as_the_scripts_do(args):
    """(hparams, params) of `model_arguments`' model in their dtype, in a process set up as the
    sampling scripts set theirs up: TensorFlow's threads and frozen weights as fast.py chooses."""
    dtype = cli.parse_dtype(args.dtype)
    chosen = choices(dtype, args)
    fast.set_threads(chosen, args.batch_size)  # before TensorFlow starts
    path = ensure_model(args.models_dir, args.model_name)
    fast.freeze_weights(chosen)  # before the first matmul
    hparams = model.load_hparams(path)
    return hparams, fast.load_params(model.find_checkpoint(path), hparams, dtype)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(parser)
    parser.add_argument("--top_k", type=int, default=40)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="random weights give a peaked distribution (top-p 0.9's nucleus is one token): "
                             "3 spreads it out, as real GPT-2's often is (bench/README.md)")
    parser.add_argument("--jit", type=lambda s: {"true": True, "false": False}[s.lower()], default=None,
                        help="true or false: force XLA on or off for the decode loop (default: fast.choices_for)")
    parser.add_argument("--plain", choices=sorted(PLAIN), action="append", default=[],
                        help="measure without this speed-up of fast.py (repeatable)")
    parser.add_argument("--alternate", choices=sorted(set(PLAIN) - {"frozen_weights", "single_threaded_ops"}),  # the process's
                        help="time fast.py's way and this plain one in turn in one process (medians)")
    parser.add_argument("--against_top_k", action="store_true",
                        help="time --top_p alone and top-k 40 in turn in one process (medians)")
    parser.add_argument("--sampling_step", action="store_true",
                        help="time the sampling step alone, top-k 40 and --top_p, on a top-p sample's logits")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest is reported")
    parser.add_argument("--peer", metavar="VENV_PYTHON", help="also time the peer (bash ../shared/peer/setup.sh)")
    parser.add_argument("--llamacpp", metavar="GGUF", help="also time llama.cpp on this GGUF of the same weights, "
                        "its dtype matching --dtype (bash ../shared/peer/llamacpp_setup.sh MODEL_DIR)")
    args = parser.parse_args()
    if args.peer and (args.top_k, args.top_p, args.temperature) != (40, 1.0, 1.0):
        parser.error("--peer samples with top-k 40 only: leave --top_k, --top_p and --temperature at their defaults")
    chosen = choices(cli.parse_dtype(args.dtype), args)
    if "single_threaded_ops" not in args.plain:
        fast.set_threads(chosen, args.batch_size)  # as the scripts do, before TensorFlow starts
    path = ensure_model(args.models_dir, args.model_name)
    if "frozen_weights" not in args.plain:
        fast.freeze_weights(chosen)  # as the scripts do, before the first matmul
    for name in args.plain:
        PLAIN[name]()
    if args.alternate or args.against_top_k or args.sampling_step:
        mode = alternate if args.alternate else top_p_against_top_k if args.against_top_k else sampling_step
        print(json.dumps(mode(path, args)))
        return
    results = list(measure(path, args))
    for result in results:
        print(json.dumps(result), flush=True)
    if args.peer:
        theirs = peer(args.peer, path, args)
        print(json.dumps(dict(measure="peer", **theirs)))
        print(json.dumps(dict(measure="ratio", dtype=args.dtype, batch_size=args.batch_size,
                              ratio=results[0]["tokens_per_s"] / theirs["tokens_per_s"])))
    if args.llamacpp:
        theirs = llamacpp(args.llamacpp, args)
        print(json.dumps(dict(measure="llamacpp", **theirs)))
        print(json.dumps(dict(measure="ratio_llamacpp", dtype=args.dtype, batch_size=args.batch_size,
                              ratio=results[0]["tokens_per_s"] / theirs["new_tokens_per_s_incl_prompt"])))


if __name__ == "__main__":
    main()
