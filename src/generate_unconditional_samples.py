#!/usr/bin/env python3
"""Samples from GPT-2 with no prompt: each sample starts from <|endoftext|>. At the end, how
fast it sampled goes to stderr."""
import cli


def sample_model(model_name="124M", seed=None, nsamples=0, batch_size=1, length=None, temperature=1,
                 top_k=0, top_p=1, models_dir="models", dtype="float32", stop_at_endoftext=False, stop=()):
    """Run the sample_model. Prints how fast it sampled on stderr at the end.

    :model_name=124M : String, which model to use
    :seed=None : Integer seed for the random numbers; the same seed gives the same samples,
     whatever the batch_size (None: a new seed every run)
    :nsamples=0 : Number of samples to print; 0 continues until Ctrl-C
    :batch_size=1 : Number of samples made at once (only affects speed/memory)
    :length=None : Number of tokens in each sample; None (default) means the model's window
     (1024 for the released models)
    :temperature=1 : Float value controlling randomness in boltzmann distribution. Lower
     temperature results in less random completions. As the temperature approaches zero, the
     model will become deterministic and repetitive. Higher temperature results in more random
     completions. Its limit at zero, greedy decoding, is --top_k 1; 0 itself is refused.
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
    :stop=() : String: end each sample where its text first contains it, however it falls
     across tokens; it is not printed. Repeat the flag for several: --stop END --stop "###"
    """
    import fast  # here, not above: cli.main answers --help and bad flags before TensorFlow loads
    import sample
    import stopping
    stopping.check_stops(stop)
    cli.check_counts(nsamples, batch_size, forever=True)
    seed = cli.make_seed(seed)
    hparams = cli.load_hparams(model_name, models_dir)
    length = hparams.n_ctx if length is None else length
    sample.check_sampling(hparams, 1, length, temperature, top_k, top_p)
    rows = batch_size if nsamples == 0 else min(batch_size, nsamples)  # sampled at a time
    choices = cli.sampling_choices(hparams, rows, 1 + length, dtype)
    enc, hparams, params = cli.load(model_name, models_dir, dtype, sampling=(rows, choices))
    end_token = enc.encoder["<|endoftext|>"]
    sampler = fast.Sampler(params, hparams, top_k=top_k, top_p=top_p, choices=choices,
                             end_token=end_token if stop_at_endoftext else None)
    del params  # the Sampler holds what it reads, laid out for it as it was read (cli.load)
    generated, speed = 0, cli.Speed(sampler)
    try:
        with speed.timed():
            while nsamples == 0 or generated < nsamples:
                batch = batch_size if nsamples == 0 else min(batch_size, nsamples - generated)
                cli.print_samples(enc, sampler, [[end_token]] * batch, length, first_sample=generated,
                                  temperature=temperature, seed=seed, stop=stop)
                generated += batch
    except KeyboardInterrupt:  # the way to end nsamples=0
        print()
    speed.report()


if __name__ == "__main__":
    cli.main(sample_model)
