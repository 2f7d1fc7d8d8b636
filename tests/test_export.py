"""export_model.py / serving.py: the SavedModel runs in a process with only TensorFlow and gives
the tokens of fast.Sampler, the model's argmax, and score.py's and the NumPy reference's
log-probabilities; bad requests are InvalidArgumentErrors naming the input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cli
import export_model
import fast
import model
import reference
import sample
import scoring
import serving
from helpers import REPO, RecordingBar, random_tokens

EXPORT = os.path.join(REPO, "src", "export_model.py")

# Loads the export in a process that has TensorFlow and nothing of this project, runs the
# requests of argv[2] (a JSON list of [signature, inputs]; {"zeros": shape} is an input of that
# shape, an empty batch say) and prints one JSON line of results.
SERVE = r"""
import importlib.util, json, sys
import tensorflow as tf
assert not any(importlib.util.find_spec(name) for name in ("fast", "model", "sample", "serving")), sys.path
loaded = tf.saved_model.load(sys.argv[1])
specs = {name: {key: [spec.shape.as_list(), spec.dtype.name]
                for key, spec in f.structured_input_signature[1].items()}
         for name, f in loaded.signatures.items()}
outputs = {name: {key: [spec.shape.as_list(), spec.dtype.name] for key, spec in f.structured_outputs.items()}
           for name, f in loaded.signatures.items()}
results = []
for name, inputs in json.load(open(sys.argv[2])):
    f = loaded.signatures[name]
    dtypes = {key: spec.dtype for key, spec in f.structured_input_signature[1].items()}
    kwargs = {key: tf.zeros(value["zeros"], dtypes[key]) if isinstance(value, dict) else tf.constant(value, dtypes[key])
              for key, value in inputs.items()}
    try:
        results.append({key: value.numpy().tolist() for key, value in f(**kwargs).items()})
    except tf.errors.InvalidArgumentError as e:
        results.append({"error": e.message})
print(json.dumps({"specs": specs, "outputs": outputs, "results": results}))
"""


def generate_request(context, lengths=None, length=8, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    context = as_input(context)
    lengths = [len(row) for row in context] if lengths is None else as_input(lengths)
    return ["generate", dict(context=context, context_length=lengths, length=length, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed)]


def score_request(tokens, lengths):
    return ["score", dict(tokens=as_input(tokens), lengths=as_input(lengths))]


def as_input(value):
    """A request's input as JSON: a list, or {"zeros": shape} as it is (see SERVE)."""
    return value if isinstance(value, dict) else np.asarray(value).tolist()


VOCAB, N_CTX = 50257, 64  # the tiny model's (conftest.py)
FILTERS = [(0, 1.0, 1.0, 0), (40, 1.0, 0.7, 1), (0, 0.9, 1.3, 2), (10, 0.8, 1.0, 2 ** 40)]  # top_k, top_p, temp, seed
UNIFORM = random_tokens(VOCAB, 3, 6, seed=1)
RAGGED_LENGTHS = [3, 9, 1]
RAGGED = np.where(np.arange(9)[None] < np.array(RAGGED_LENGTHS)[:, None], random_tokens(VOCAB, 3, 9, seed=2), -7)
SCORED = np.concatenate([np.full([3, 1], scoring.END_OF_TEXT), random_tokens(VOCAB, 3, 11, seed=3)], 1)
SCORED_LENGTHS = [12, 5, 1]
SHAPES = [(1, 1, 64), (3, 1, 1), (1, 63, 2), (3, 64, 1), (2, 30, 20)]  # batch, prompt, length: generate
SCORE_SHAPES = [(1, 1), (3, 2), (1, 64), (3, 33)]  # batch, n
GOOD = generate_request(UNIFORM[:1], length=3, top_k=5, seed=3)
BAD = [  # (signature, inputs), the input the error must name
    (generate_request([[1, 2]], length=0), "length"),
    (generate_request([[1] * 10] * 2, [10, 2], length=56), "length"),  # 10 + 56 - 1 > 64
    (generate_request([[1] * 10] * 2, [9, 2], length=56), None),  # 9 + 56 - 1 <= 64: not an error
    (generate_request([[1, 2]], top_p=0.0), "top_p"),
    (generate_request([[1, 2]], top_p=1.5), "top_p"),
    (generate_request([[1, 2]], top_p=float("nan")), "top_p"),
    (generate_request([[1, VOCAB]]), "context"),
    (generate_request([[-1, 2]]), "context"),
    (generate_request([[1, 2]], [0]), "context_length"),
    (generate_request([[1, 2]], [3]), "context_length"),
    (generate_request([[1, 2]], [2, 2]), "context_length"),
    (generate_request([[1, 2]], temperature=0.0), "temperature"),
    (generate_request([[1, 2]], top_k=-1), "top_k"),
    (generate_request([[1, 2]], top_k=VOCAB + 1), "top_k"),
    (generate_request([[1, 2]], seed=-1), "seed"),
    (generate_request([[1, 2]], length=2 ** 31 - 1), "length"),  # 2 + length - 1 wraps around in int32
    (generate_request({"zeros": [0, 2]}, {"zeros": [0]}), "context"),  # an empty batch
    (score_request([[1, 2]], [0]), "lengths"),
    (score_request([[1, 2]], [3]), "lengths"),
    (score_request([[1, VOCAB]], [2]), "tokens"),
    (score_request([[1] * 65], [65]), "tokens"),
    (score_request({"zeros": [0, 2]}, {"zeros": [0]}), "tokens"),  # an empty batch
]


def requests():
    """{name: [requests]}: what the loaded export is asked, by test."""
    return {
        "filters": [generate_request(UNIFORM, length=16, top_k=k, top_p=p, temperature=t, seed=s)
                    for k, p, t, s in FILTERS],
        "ragged": [generate_request(RAGGED, RAGGED_LENGTHS, length=12, top_k=k, top_p=p, temperature=t, seed=s)
                   for k, p, t, s in FILTERS],
        "greedy": [generate_request(UNIFORM[:2, :5], length=12, top_k=1, seed=5)],
        "score": [score_request(SCORED, SCORED_LENGTHS)],
        "shapes": [generate_request(random_tokens(VOCAB, b, n, seed=n), length=length, top_k=3, seed=b)
                   for b, n, length in SHAPES]
                  + [score_request(random_tokens(VOCAB, b, n), [n] * b) for b, n in SCORE_SHAPES],
        "bad": [GOOD] + [request for bad in BAD for request in (bad[0], GOOD)],
    }


@pytest.fixture(scope="module")
def export(models_dir, tiny_model, tmp_path_factory):
    """(export_dir, the script's CompletedProcess): tiny_model exported once by the script."""
    export_dir = str(tmp_path_factory.mktemp("exported") / "tiny" / "1")
    result = subprocess.run([sys.executable, EXPORT, "--model_name", tiny_model, "--models_dir", models_dir,
                             "--export_dir", export_dir], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0, result.stderr
    return export_dir, result


@pytest.fixture(scope="module")
def served(export, tmp_path_factory):
    """The loaded export's answers to `requests()`, from a fresh process with only TensorFlow."""
    return serve(export[0], requests(), tmp_path_factory.mktemp("client"))


def serve(export_dir, asked, folder):
    """(the client's output, {name: answers}) for asked, {name: [requests]}, from a fresh
    process with only TensorFlow that loads export_dir."""
    (folder / "requests.json").write_text(json.dumps([r for group in asked.values() for r in group]))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", SERVE, export_dir, "requests.json"], capture_output=True,
                            text=True, timeout=600, cwd=folder, env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    answers, results = {}, iter(out["results"])
    for name, group in asked.items():
        answers[name] = [next(results) for _ in group]
    return out, answers


def tokens_of(answer):
    assert "error" not in answer, answer["error"]
    return np.array(answer["tokens"])


# --- the export itself -------------------------------------------------------------------------

def test_script_writes_the_export_and_says_so(export):
    export_dir, result = export
    assert {"assets", "fingerprint.pb", "saved_model.pb", "variables"} <= set(os.listdir(export_dir))
    assert os.listdir(os.path.dirname(export_dir)) == ["1"]  # no temporary folder left
    assert oct(os.stat(export_dir).st_mode & 0o777) == oct(0o777 & ~current_umask())
    assert result.stdout.strip() == (f"exported tiny (float32) to {export_dir}: "
                                     "signatures generate (serving_default) and score")
    try:
        import tensorflow_serving  # noqa: F401
    except ImportError:
        assert result.stderr == ("no assets.extra/tf_serving_warmup_requests written: TF Serving warmup requests "
                                 "need the tensorflow-serving-api package\n")
    else:  # the warmup requests are the two signatures'
        from tensorflow_serving.apis import prediction_log_pb2
        import tensorflow as tf
        assert result.stderr == ""
        logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
                for record in tf.data.TFRecordDataset(os.path.join(export_dir, serving.WARMUP))]
        assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["generate", "score"]


def current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_an_existing_export_dir_is_refused_in_one_line(export, models_dir, tiny_model):
    with pytest.raises(FileExistsError) as e:
        export_model.export_model(tiny_model, models_dir, export[0])
    assert cli.error_line(e.value) == f"error: {export[0]} exists: remove it, or export to a new version folder"


def test_an_export_dir_that_cannot_be_made_is_refused_before_loading(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError) as e:  # "absent": refused before the model is looked for
        export_model.export_model("absent", str(tmp_path), str(tmp_path / "file" / "1"))
    assert cli.error_line(e.value) == (f"error: cannot make {tmp_path / 'file' / '1'}: {tmp_path / 'file'} is a "
                                       "file, not a folder; choose another destination")


def test_a_failure_to_make_the_export_dir_names_it(tiny, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(serving.paths.tempfile, "mkdtemp", full)
    hparams, params = tiny
    with pytest.raises(OSError) as e:
        serving.export(params, hparams, str(tmp_path / "gpt2" / "1"))
    assert cli.error_line(e.value) == (f"error: cannot make {tmp_path / 'gpt2' / '1'} (No space left on device): "
                                       "choose another destination")


def test_a_failed_export_leaves_nothing(tiny, tmp_path, monkeypatch):
    hparams, params = tiny
    monkeypatch.setattr(serving, "write_warmup", lambda folder, n_vocab: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        serving.export(params, hparams, str(tmp_path / "gpt2" / "1"))
    assert os.listdir(tmp_path) == []  # nor the folder gpt2/, made for it


def test_a_full_disk_says_so_and_leaves_nothing(models_dir, tiny_model, tmp_path, monkeypatch):
    """TensorFlow reports ENOSPC as ResourceExhaustedError, which is no "out of memory"."""
    def full(servable, folder, signatures):
        (tmp_path / "gpt2" / os.path.basename(folder) / "saved_model.pb.tmp1").write_bytes(b"part")
        raise serving.tf.errors.ResourceExhaustedError(None, None, f"{folder}/saved_model.pb.tmp1; No space left on "
                                                                   "device")
    monkeypatch.setattr(serving.tf.saved_model, "save", full)
    export_dir = tmp_path / "gpt2" / "1"
    with pytest.raises(OSError) as e:
        export_model.export_model(model_name=tiny_model, models_dir=models_dir, export_dir=str(export_dir))
    assert cli.error_line(e.value) == (f"error: the disk holding {tmp_path / 'gpt2'} is full: {export_dir} is not "
                                       "written (nothing of it is left); free space there, or give another "
                                       "--export_dir")
    assert os.listdir(tmp_path) == []  # nor the folder gpt2/, made for it


def test_signatures_take_any_batch_and_length(served):
    out, _ = served
    assert sorted(out["specs"]) == ["generate", "score", "serving_default"]
    assert out["specs"]["generate"] == out["specs"]["serving_default"] == {
        "context": [[None, None], "int32"], "context_length": [[None], "int32"], "length": [[], "int32"],
        "temperature": [[], "float32"], "top_k": [[], "int32"], "top_p": [[], "float32"], "seed": [[], "int64"]}
    assert out["specs"]["score"] == {"tokens": [[None, None], "int32"], "lengths": [[None], "int32"]}
    assert out["outputs"]["generate"] == {"tokens": [[None, None], "int32"]}
    assert out["outputs"]["score"] == {"logprobs": [[None, None], "float32"]}


def test_saved_model_cli_lists_both_signatures(export):
    cli_path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli_path, "show", "--all", "--dir", export[0]], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    for name in ["generate", "score", "serving_default"]:
        assert f"signature_def['{name}']:" in result.stdout
    assert "inputs['context'] tensor_info:\n        dtype: DT_INT32\n        shape: (-1, -1)" in result.stdout
    assert "outputs['logprobs'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, -1)" in result.stdout


# --- what it serves -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def samplers(tiny):
    """fast.Sampler for each of FILTERS' top_k and top_p, without XLA, the quicker to trace
    (test_fast.py holds it to the XLA one the scripts use on a CPU, as does the test below)."""
    hparams, params = tiny
    return {(k, p): fast.Sampler(params, hparams, top_k=k, top_p=p, jit=False) for k, p, _, _ in FILTERS}


def test_generate_gives_the_samplers_tokens(served, samplers):
    for (k, p, temperature, seed), answer in zip(FILTERS, served[1]["filters"]):
        want = samplers[k, p].sample(UNIFORM, 16, temperature=temperature, seed=seed)[:, 6:]
        np.testing.assert_array_equal(tokens_of(answer), want)


def test_generate_gives_the_scripts_tokens(served, tiny):
    hparams, params = tiny
    k, p, temperature, seed = FILTERS[1]
    sampler = fast.Sampler(params, hparams, top_k=k, top_p=p)  # the scripts' choices
    want = sampler.sample(UNIFORM, 16, temperature=temperature, seed=seed)[:, 6:]
    np.testing.assert_array_equal(tokens_of(served[1]["filters"][1]), want)


def test_ragged_rows_give_what_each_prompt_gives_alone(served, samplers):
    for (k, p, temperature, seed), answer in zip(FILTERS, served[1]["ragged"]):
        got = tokens_of(answer)
        assert got.shape == (3, 12)
        for row, (prompt, n) in enumerate(zip(RAGGED, RAGGED_LENGTHS)):
            want = samplers[k, p].sample(prompt[None, :n], 12, temperature=temperature, seed=seed, first_sample=row)
            np.testing.assert_array_equal(got[row], want[0, n:])


def test_top_k_1_is_the_models_argmax(served, tiny):
    hparams, params = tiny
    tokens = UNIFORM[:2, :5]
    for _ in range(12):
        logits = model.model(params, hparams, tokens)["logits"][:, -1]
        tokens = np.concatenate([tokens, np.argmax(logits, -1)[:, None].astype(np.int32)], 1)
    np.testing.assert_array_equal(tokens_of(served[1]["greedy"][0]), tokens[:, 5:])


def test_score_equals_score_py_and_the_reference(served, tiny, models_dir, tiny_model):
    hparams, params = tiny
    got = np.array(served[1]["score"][0]["logprobs"])
    assert got.shape == (3, 11)
    rh, rw = reference.load(os.path.join(models_dir, tiny_model))
    logits_fn = scoring.logits_function(params, hparams)
    for row, tokens, n in zip(got, SCORED, SCORED_LENGTHS):
        np.testing.assert_allclose(row[:n - 1], scoring.score_tokens(logits_fn, hparams, tokens[1:n]), atol=1e-5, rtol=0)
        np.testing.assert_allclose(row[:n - 1], reference.logprobs(rh, rw, tokens[:n]), atol=1e-4, rtol=0)
        assert not row[n - 1:].any()


def test_batches_of_1_and_3_and_lengths_up_to_the_window(served):
    answers = served[1]["shapes"]
    for (batch, n, length), answer in zip(SHAPES, answers):
        assert tokens_of(answer).shape == (batch, length)
    for (batch, n), answer in zip(SCORE_SHAPES, answers[len(SHAPES):]):
        assert np.array(answer["logprobs"]).shape == (batch, n - 1)


def test_bad_requests_name_the_input_and_serving_goes_on(served):
    check_bad_answers(served[1]["bad"])
    temperature_0 = served[1]["bad"][1 + 2 * [name for _, name in BAD].index("temperature")]
    assert "use top_k 1" in temperature_0["error"]  # greedy decoding


def check_bad_answers(answers):
    """Asserts that each of BAD's answers names its input, and that the GOOD request after it
    is served as GOOD was at first."""
    good, rest = answers[0], answers[1:]
    for (request, name), answer, after in zip(BAD, rest[::2], rest[1::2]):
        if name is None:
            assert "error" not in answer
        else:
            assert f"\nassertion failed: [{name} must " in answer.get("error", ""), (request, answer)
        assert after == good  # the next good request is served, and alike


def test_filters_take_tensors_as_numbers(tiny):
    import tensorflow as tf
    logits = tf.constant(np.random.RandomState(0).randn(2, 50), tf.float32)
    for k, p in [(0, 1.0), (3, 1.0), (0, 0.5), (3, 0.5)]:
        keys = sample.sample_keys(1, 0, 2)
        want = fast.next_token(logits, keys, 4, 0.9, k, p, xla=False)
        got = fast.next_token(logits, keys, 4, tf.constant(0.9), tf.constant(k), tf.constant(p), xla=False)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(sample.top_p_logits(sample.top_k_logits(logits, tf.constant(k)), tf.constant(p)),
                                      sample.top_p_logits(sample.top_k_logits(logits, k), p))


def test_a_bfloat16_export_gives_the_bfloat16_samplers_tokens(models_dir, tiny_model, tmp_path):
    import tensorflow as tf
    path = os.path.join(models_dir, tiny_model)
    hparams = model.load_hparams(path)
    params = fast.load_params(model.find_checkpoint(path), hparams, tf.bfloat16)
    serving.export(params, hparams, str(tmp_path / "1"))
    loaded = tf.saved_model.load(str(tmp_path / "1"))
    assert {v.dtype for v in tf.nest.flatten(loaded.params)} == {tf.bfloat16, tf.float32}  # norms: float32
    got = loaded.signatures["generate"](context=UNIFORM, context_length=[6] * 3, length=tf.constant(10),
                                        temperature=tf.constant(1.0), top_k=tf.constant(10),
                                        top_p=tf.constant(0.9), seed=tf.constant(4, tf.int64))["tokens"]
    plain = fast.Choices()  # TensorFlow's kernels, as the export runs them (not oneDNN's fused ones, which round otherwise)
    want = fast.Sampler(params, hparams, top_k=10, top_p=0.9, choices=plain).sample(UNIFORM, 10, seed=4)[:, 6:]
    np.testing.assert_array_equal(got, want)


def test_an_xla_export_gives_the_plain_exports_tokens(tiny, served, tmp_path):
    hparams, params = tiny
    serving.export(params, hparams, str(tmp_path / "1"), xla=True)
    asked = {name: requests()[name] for name in ("filters", "ragged", "bad")}  # batch 3, 1 and 2: three compiled shapes
    _, answers = serve(str(tmp_path / "1"), asked, tmp_path)
    for name in ("filters", "ragged"):
        for got, want in zip(answers[name], served[1][name]):
            np.testing.assert_array_equal(tokens_of(got), tokens_of(want))
    check_bad_answers(answers["bad"])


def test_generate_says_nan_logits_rather_than_return_ids_past_the_vocabulary(tiny):
    import tensorflow as tf
    hparams, params = tiny
    params = dict(params, ln_f=dict(params["ln_f"], g=params["ln_f"]["g"] * np.nan))
    with pytest.raises(tf.errors.InvalidArgumentError, match="the model's logits are NaN"):
        serving.generate_tokens(params, hparams, tf.zeros([2, 3], tf.int32), tf.constant([3, 3]), 2,
                                tf.constant(1.0), tf.constant(0), tf.constant(1.0), tf.constant(0, tf.int64), xla=True)


@pytest.mark.parametrize("n_vocab, token", [(50257, 50256), (300, 299)])
def test_warmup_requests_hold_ids_of_the_models_vocabulary(n_vocab, token):
    """GPT-2's <|endoftext|>, 50256, or for a model with a smaller vocabulary of its own an id it
    has: a request TF Serving's warmup runs must pass the signatures' checks."""
    requests = dict(serving.warmup_requests(n_vocab))
    assert requests["generate"]["context"].tolist() == [[token]]
    assert requests["score"]["tokens"].tolist() == [[token, token]]


def test_an_export_shows_its_stages_in_a_bar(models_dir, tiny_model, tmp_path, monkeypatch):
    """355M takes ~13 s, most of it writing the SavedModel: a terminal sees which stage it is in."""
    monkeypatch.setattr(RecordingBar, "bars", [])
    monkeypatch.setattr(export_model, "tqdm", RecordingBar)
    export_model.export_model(tiny_model, models_dir, str(tmp_path / "gpt2" / "1"))
    [bar] = RecordingBar.bars
    assert (bar.kwargs["desc"], bar.kwargs["total"], bar.kwargs["disable"]) == ("exporting", 2, None)
    assert bar.updates == [1, 1]
    assert bar.postfixes == [f"reading {os.path.join(models_dir, tiny_model)}",
                             f"tracing and writing {tmp_path / 'gpt2' / '1'}"]
