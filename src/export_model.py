#!/usr/bin/env python3
"""Exports GPT-2 as a TensorFlow SavedModel that serves without this project's code (TF Serving,
or `tf.saved_model.load` in any TensorFlow): signatures `generate` (also `serving_default`) and
`score`, described in src/serving.py and README.md (Serve it)."""
import os
import sys

from tqdm import tqdm

import cli
import logs
import paths


def export_model(model_name="124M", models_dir="models", export_dir=None, dtype="float32", xla=False):
    """Export a model as a SavedModel for serving

    :model_name=124M : String, which model to export
    :models_dir=models : path to parent folder containing model subfolders (i.e. contains the
     <model_name> folder)
    :export_dir=None : String, the folder to write, which must not exist: a numbered version
     folder, as TF Serving reads them (default exported/<model_name>/1)
    :dtype=float32 : String, weights in float32, bfloat16 or float16
    :xla=False : Boolean, compile generate's decode loop with XLA: faster on a CPU, where TF
     Serving must then run with --xla_cpu_compilation_enabled=true
    """
    import fast  # here, not above: cli.main answers --help and bad flags before TensorFlow loads
    import model
    import serving
    export_dir = os.path.join("exported", str(model_name), "1") if export_dir is None else str(export_dir)
    paths.check_destination(export_dir, fix="remove it, or export to a new version folder")  # before the loading
    tf_dtype = cli.parse_dtype(dtype)
    path = model.model_dir(str(model_name), cli.expand_dir(models_dir))
    hparams = model.load_hparams(path)
    full = paths.disk_full_said(os.path.dirname(os.path.normpath(export_dir)) or ".",
                                f"{export_dir} is not written (nothing of it is left); free space there, or give "
                                "another --export_dir")
    with tqdm(total=2, desc="exporting", unit="stage", disable=None) as bar:  # 355M: ~13 s, most of it saving
        bar.set_postfix_str(f"reading {path}")
        params = fast.load_params(model.find_checkpoint(path), hparams, tf_dtype)
        bar.update(1)
        bar.set_postfix_str(f"tracing and writing {export_dir}")
        with full, logs.held_back():  # the C++ lines that saving graphs logs before absl is set up
            warmup = serving.export(params, hparams, export_dir, xla=xla)
        bar.update(1)
    if not warmup:
        print(f"no {serving.WARMUP} written: TF Serving warmup requests need the tensorflow-serving-api package",
              file=sys.stderr)
    compiled = " (its decode loop compiled by XLA)" if xla else ""
    print(f"exported {model_name} ({dtype}) to {export_dir}: signatures generate{compiled} (serving_default) and score")


if __name__ == "__main__":
    cli.main(export_model)
