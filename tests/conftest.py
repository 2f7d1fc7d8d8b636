"""Fixtures shared by the test layers."""
import os
import shutil
import signal
import tempfile

import pytest

import encoder
import helpers

# The scripts the tests start keep XLA's compiled programs in a folder of the session's
# (compile_cache.py), not in the user's ~/.cache: one this process makes and removes at the end
# (`pytest_sessionfinish`), unless GPT2_XLA_CACHE names one already (a process that started this
# one made it: pytest-xdist's workers inherit the environment of the process that starts them).
OWN_XLA_CACHE = None if "GPT2_XLA_CACHE" in os.environ else tempfile.mkdtemp(prefix="gpt2-tests-xla-")
if OWN_XLA_CACHE:
    os.environ["GPT2_XLA_CACHE"] = OWN_XLA_CACHE

# A suite started in the background (`pytest &` in a script) inherits SIGINT ignored, and so would
# the processes the Ctrl-C tests start, which then never see it: they get the default instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session):
    if OWN_XLA_CACHE:
        shutil.rmtree(OWN_XLA_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def xla_flags_as_they_were():
    """A test that runs a script's `cli.main` in its own process points TF_XLA_FLAGS at that
    process's folder of compiled programs (compile_cache.start): set back after each test, lest the
    scripts later tests start inherit it and write there, around the cache the tests check."""
    before = os.environ.get("TF_XLA_FLAGS")
    yield
    if before is None:
        os.environ.pop("TF_XLA_FLAGS", None)
    else:
        os.environ["TF_XLA_FLAGS"] = before


@pytest.fixture(scope="session")
def vocab_dir():
    """The folder holding GPT-2's real `encoder.json` and `vocab.bpe`: the repository's copy in
    tests/gpt2-vocab, or the folder GPT2_VOCAB_DIR names. Missing, it fails the tests that need
    it, never skips them."""
    try:
        return helpers.find_vocab_dir(os.environ)
    except ValueError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def enc(vocab_dir):
    """The `Encoder` of `vocab_dir`, one for the session's tests."""
    return encoder.get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A models/ folder shared by the session's tests; see `tiny_model`."""
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_model(models_dir, vocab_dir):
    """Name of a tiny GPT-2 (real vocabulary, 2 layers of width 32, window 64) in `models_dir`."""
    import checkpoints
    checkpoints.write_checkpoint(os.path.join(models_dir, "tiny"), checkpoints.TINY, vocab_dir)
    return "tiny"


@pytest.fixture(scope="session")
def tiny(models_dir, tiny_model):
    """(hparams, float32 params) of `tiny_model`."""
    return helpers.load(os.path.join(models_dir, tiny_model))


@pytest.fixture(scope="session")
def no_tensorflow(tmp_path_factory):
    """The environment a script runs in as a user starts it, but where importing TensorFlow
    fails: a script that gets its work done in it has not loaded TensorFlow."""
    folder = tmp_path_factory.mktemp("no-tensorflow")
    (folder / "tensorflow").mkdir()
    (folder / "tensorflow" / "__init__.py").write_text('raise ImportError("TensorFlow was imported")\n')
    environ = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    return {**environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "UTF-8", "PYTHONPATH": str(folder)}
