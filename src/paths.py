"""Where a downloaded model lives, and the command that downloads (or repairs) it."""
import os


def download_command(model_name, models_dir="models"):
    """The command that downloads a model, or repairs a damaged one.

    >>> download_command("124M")
    'python3 download_model.py 124M'
    >>> download_command("355M", "/data/gpt2")
    'python3 download_model.py 355M --models_dir /data/gpt2'
    """
    flag = "" if os.path.normpath(models_dir) == "models" else f" --models_dir {models_dir}"
    return f"python3 download_model.py {model_name}{flag}"
