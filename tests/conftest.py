"""Fixtures shared by the test layers."""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def vocab_dir():
    """The folder holding GPT-2's real `encoder.json` and `vocab.bpe`.

    CI points GPT2_VOCAB_DIR at ../shared/gpt2-vocab; on a user's machine a downloaded model's
    folder has the same two files. Under CI a missing vocabulary is a failure, never a skip.
    """
    candidates = [os.environ.get("GPT2_VOCAB_DIR", ""), os.path.join(REPO, "models", "124M")]
    for path in candidates:
        if path and all(os.path.isfile(os.path.join(path, f)) for f in ("encoder.json", "vocab.bpe")):
            return path
    message = "GPT-2 vocabulary not found: set GPT2_VOCAB_DIR to a folder with encoder.json and vocab.bpe"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
