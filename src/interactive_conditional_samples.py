#!/usr/bin/env python3
"""Continues prompts typed at `Model prompt >>> ` with GPT-2 samples."""
import select
import sys

import cli
import fast
import sample


def ask(prompt):
    """input(prompt), where Ctrl-C at a terminal always works.

    The SIGINT may reach one of TensorFlow's threads rather than the main one, whose read of the
    terminal would then go on; waiting in short slices lets the main thread see it.
    """
    if not sys.stdin.isatty():
        return input(prompt)
    print(prompt, end="", flush=True)
    while not select.select([sys.stdin], [], [], 0.1)[0]:
        pass
    return input()


def read_prompt():
    """The next non-empty prompt; EOFError at end of input."""
    raw_text = ask("Model prompt >>> ")
    while not raw_text:
        print("Prompt should not be empty!")
        raw_text = ask("Model prompt >>> ")
    return raw_text


def interact_model(model_name="124M", seed=None, nsamples=1, batch_size=1, length=None, temperature=1,
                   top_k=0, top_p=1, models_dir="models", dtype="float32", stop_at_endoftext=False):
    """Interactively run the model

    :model_name=124M : String, which model to use
    :seed=None : Integer seed for the random numbers; the same seed gives the same samples,
     whatever the batch_size (None: a new seed every run)
    :nsamples=1 : Number of samples to return for each prompt
    :batch_size=1 : Number of samples made at once (only affects speed/memory); a lone sample
     is streamed token by token. nsamples need not be a multiple of it.
    :length=None : Number of tokens in generated text; None (default) means half the model's
     window (512 for the released models)
    :temperature=1 : Float value controlling randomness in boltzmann distribution. Lower
     temperature results in less random completions. As the temperature approaches zero, the
     model will become deterministic and repetitive. Higher temperature results in more random
     completions.
    :top_k=0 : Integer value controlling diversity. 1 means only 1 word is considered for each
     step (token), resulting in deterministic completions, while 40 means 40 words are considered
     at each step. 0 (default) is a special setting meaning no restrictions. 40 generally is a
     good value.
    :top_p=1 : Float in (0, 1], nucleus sampling: keep the most likely tokens whose probabilities
     add up to at most top_p (at least one). 1 (default) keeps all.
    :models_dir=models : path to parent folder containing model subfolders (i.e. contains the
     <model_name> folder)
    :dtype=float32 : String, weights and matmuls in float32, bfloat16 or float16
    :stop_at_endoftext=False : Boolean, end each sample at its first <|endoftext|>
    """
    cli.check_counts(nsamples, batch_size)
    seed = cli.make_seed(seed)
    hparams = cli.load_hparams(model_name, models_dir)
    length = hparams.n_ctx // 2 if length is None else length
    sample.check_sampling(hparams, 1, length, temperature, top_k, top_p)
    enc, hparams, params = cli.load(model_name, models_dir, dtype)
    sampler = fast.Sampler(params, hparams, top_k=top_k, top_p=top_p,
                             end_token=enc.encoder["<|endoftext|>"] if stop_at_endoftext else None)
    try:
        while True:
            context_tokens = enc.encode(read_prompt())
            if len(context_tokens) + length - 1 > hparams.n_ctx:
                print(f"Prompt too long: {len(context_tokens)} tokens plus --length {length} exceed the window of "
                      f"{hparams.n_ctx} tokens; use at most {hparams.n_ctx + 1 - length} prompt tokens.")
                continue
            for first in range(0, nsamples, batch_size):
                batch = min(batch_size, nsamples - first)
                cli.print_samples(enc, sampler, [context_tokens] * batch, length, first_sample=first,
                                  temperature=temperature, seed=seed)
            print("=" * 80)
    except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C ends the session
        print()


if __name__ == "__main__":
    cli.main(interact_model)
