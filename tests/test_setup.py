"""What a new user meets first: the Pythons the guides name, the README's Python example, and the
vocabulary that lets the tests run on a fresh clone."""
import hashlib
import os
import re
import subprocess
import sys

import pytest

import cli
import helpers
from helpers import REPO

# OpenAI's files, as every released model has them (tests/gpt2-vocab/README.md).
OPENAI_MD5 = {"encoder.json": "dffec25a898b1f5e569bec4dffd7e5c0", "vocab.bpe": "75a37753dd7a28a2c5df80c28bf06e4e"}


def read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("name", sorted(OPENAI_MD5))
def test_the_committed_vocabulary_is_openais(name):
    with open(os.path.join(helpers.VOCAB_DIR, name), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == OPENAI_MD5[name]


def test_the_tests_find_the_vocabulary_on_a_fresh_clone(tmp_path):
    assert helpers.find_vocab_dir({}) == helpers.find_vocab_dir({"GPT2_VOCAB_DIR": ""}) == helpers.VOCAB_DIR
    with pytest.raises(ValueError, match="has no encoder.json or vocab.bpe: point GPT2_VOCAB_DIR at a folder"):
        helpers.find_vocab_dir({"GPT2_VOCAB_DIR": str(tmp_path)})
    for name in OPENAI_MD5:
        (tmp_path / name).write_text("{}")
    assert helpers.find_vocab_dir({"GPT2_VOCAB_DIR": str(tmp_path)}) == str(tmp_path)


def test_the_guides_name_the_pythons_the_scripts_accept():
    (low_major, low_minor), (high_major, high_minor) = cli.PYTHONS
    versions = f"Python {low_major}.{low_minor} to {high_major}.{high_minor}"
    assert versions in read("README.md") and versions in read("DEVELOPERS.md")
    assert cli.python_problem((low_major, low_minor - 1)) and cli.python_problem((high_major, high_minor + 1))
    assert versions in cli.python_problem((3, 14))


def readme_python_example():
    """The one ```python block of README.md."""
    blocks = re.findall(r"^```python\n(.*?)^```", read("README.md"), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"README.md has {len(blocks)} Python examples"
    return blocks[0]


def test_the_readmes_python_example_runs_from_the_repository_root(models_dir, tiny_model):
    code = readme_python_example()
    # The tiny model stands in for 124M; the rest runs as written, from the repository root,
    # without the tests' sys.path. Each `expression  # value` comment is checked too.
    assert '"124M", "models"' in code and code.count('"models/124M"') == 2
    path = os.path.join(models_dir, tiny_model)
    code = code.replace('"124M", "models"', f"{tiny_model!r}, {models_dir!r}").replace('"models/124M"', repr(path))
    claims = re.findall(r"^(\S.*?)\s+# (\[.*\])$", code, re.MULTILINE)
    assert claims, "the example shows a known answer in a comment"
    code += "".join(f"\nassert {expression} == {value}, {expression!r}" for expression, value in claims)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The meaning of life is") and len(result.stdout) > len("The meaning of life is")


# The folders in the repository that README.md's commands write (models, exports, conversions,
# runs, benchmark data): none belongs in git or in Docker's build context.
WRITTEN = ["models", "exported", "hf", "checkpoint", "samples", "data"]


@pytest.mark.parametrize("name", WRITTEN)
def test_what_the_readmes_commands_write_stays_out_of_git_and_docker(name):
    assert re.search(rf"[ `']{name}/", read("README.md")), f"README.md writes no {name}/: update WRITTEN"
    ignored = {line.strip("/*") for line in read(".gitignore").splitlines() if line and line[0] not in "#!"}
    assert name in ignored, f".gitignore lacks /{name}/"
    assert name in read(".dockerignore").splitlines(), f".dockerignore lacks {name}"


def test_the_guides_say_what_the_tests_and_the_models_are_now():
    contributing = read("CONTRIBUTORS.md")
    assert os.path.relpath(helpers.VOCAB_DIR, REPO) in contributing and "GPT2_VOCAB_DIR" not in contributing
    card = read("model_card.md")
    assert "src/train.py" in card and "src/convert_checkpoint.py" in card  # what makes other models
