"""Training on several replicas (tf.distribute): 2 replicas with batch b make the update of one
device with batch 2b.

MirroredStrategy over two logical CPUs runs in a child process (`python tests/test_distribute.py
MODEL_PATH`), because logical devices must be set before TensorFlow starts. MultiWorkerMirroredStrategy
runs as TensorFlow's multi-worker tutorial runs it: two train.py processes that TF_CONFIG joins in a
cluster on 127.0.0.1, worker 0 the chief, which alone writes the run folder. The workers run in a
network namespace of their own, only loopback in it, where Linux allows (see loopback_only).
"""
import inspect
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf

import saving
from helpers import REPO, summaries

TRAIN = os.path.join(REPO, "src", "train.py")
BATCH, LENGTH = 2, 16  # windows on each replica, tokens in each window
# The weights are at most ~1.6 in size (checkpoints.initial_value), where float32's spacing is 1.2e-7:
# the same gradients summed in another order (each replica's half, then the all-reduce) give updates
# a few spacings apart.
ROUNDING = 1e-6
LOSS_RTOL = 1e-5  # a mean of 64-128 cross-entropies, added in another order
# {optimizer: (learning rate, each step's accumulate_gradients)}: SGD's update is the gradient, so it
# shows a gradient scaled wrongly (replicas averaged instead of summed), which Adam's step, the same
# for any scale, hides (its moments show it).
MIRRORED_STEPS = {"sgd": (0.1, (1, 2)), "adam": (3e-4, (2, 2))}


def key_bias(name, n_embd):
    """The slice of checkpoint variable `name` that is attention's key bias, or None: its gradient
    is zero but for rounding, since softmax(q.(k + b)) = softmax(q.k), q.b being the same for every
    key. Adam divides that noise by its own size, a step of up to the learning rate: elsewhere a
    gradient's rounding changes Adam's step by rounding x learning rate / epsilon at most (epsilon
    1e-8), far below the learning rate."""
    return slice(n_embd, 2 * n_embd) if name.endswith("attn/c_attn/b") else None


def mirrored_steps(model_path):
    """(Child process.) The steps of MIRRORED_STEPS, the same windows [accumulate, 2 * BATCH, LENGTH]
    given to a Trainer on one device and to one on two logical CPUs: {optimizer: [per step: {losses:
    [one device, two], weights: {name: largest difference}, key_bias: {name: largest difference},
    moved: {name: largest move from the start}, optimizer: [[largest difference, largest value] of each
    optimizer variable]}]}."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import model
    import training
    hparams = model.load_hparams(model_path)
    values = model.read_checkpoint(model.find_checkpoint(model_path), hparams)
    two_cpus = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng, results = np.random.default_rng(0), {}
    for optimizer, (learning_rate, accumulates) in MIRRORED_STEPS.items():
        trainers = [training.Trainer(values, hparams, optimizer=optimizer, learning_rate=learning_rate,
                                     strategy=strategy) for strategy in (None, two_cpus)]
        assert trainers[1].strategy.num_replicas_in_sync == 2
        results[optimizer] = []
        for accumulate in accumulates:
            windows = rng.integers(0, hparams.n_vocab, (accumulate, 2 * BATCH, LENGTH), dtype=np.int32)
            losses = [float(trainer.step(windows)) for trainer in trainers]
            one, two = [{name: np.asarray(value) for name, value in trainer.checkpoint_values().items()}
                        for trainer in trainers]
            step = {"losses": losses, "weights": {}, "key_bias": {}, "moved": {}}
            for name in values:
                difference, keys = np.abs(one[name] - two[name]), key_bias(name, hparams.n_embd)
                if keys is not None:
                    step["key_bias"][name] = float(difference[..., keys].max())
                    difference[..., keys] = 0
                step["weights"][name] = float(difference.max())
                step["moved"][name] = float(np.abs(one[name] - values[name]).max())
            step["optimizer"] = [[float(np.abs(a.numpy() - b.numpy()).max()), float(np.abs(a.numpy()).max())]
                                 for a, b in zip(trainers[0].optimizer.variables, trainers[1].optimizer.variables)]
            results[optimizer].append(step)
    results["bfloat16"] = mirrored_copies(values, hparams, two_cpus, rng)
    return results


def mirrored_copies(values, hparams, strategy, rng):
    """(Child process.) Adam steps in bfloat16, one window a replica and then two accumulated, on
    one device and on `strategy`: [per step: {losses: [one device, two], copies: the largest
    difference, on any replica, between a bfloat16 copy the pass reads and its float32 weight
    converted}]."""
    import training
    trainers = [training.Trainer(values, hparams, dtype="bfloat16", learning_rate=3e-4, strategy=s)
                for s in (None, strategy)]
    two, steps = trainers[1], []
    for accumulate in (1, 2):
        windows = rng.integers(0, hparams.n_vocab, (accumulate, 2 * BATCH, LENGTH), dtype=np.int32)
        losses = [float(trainer.step(windows)) for trainer in trainers]
        local = [[two.strategy.experimental_local_results(v) for v in pair]
                 for pair in zip(two.computed_trainable, two.trainable)]
        copies = max(float(tf.reduce_max(tf.abs(tf.cast(c, tf.float32) - tf.cast(tf.cast(w, c.dtype), tf.float32))))
                     for replicas in local for c, w in zip(*replicas))
        steps.append({"losses": losses, "copies": copies})
    return steps


def run_mirrored(model_path):
    """mirrored_steps(model_path) from a child process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.join(REPO, folder) for folder in ("src", "bench", "tests"))}
    result = subprocess.run([sys.executable, __file__, model_path], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def mirrored(models_dir, tiny_model):
    """run_mirrored on the tiny model, once for the module's tests."""
    return run_mirrored(os.path.join(models_dir, tiny_model))


def check_losses(steps):
    for step in steps:
        np.testing.assert_allclose(step["losses"][1], step["losses"][0], rtol=LOSS_RTOL)


def test_mirrored_sgd_makes_the_update_of_one_device(mirrored):
    """Step 1 of one window per replica, step 2 accumulating two."""
    steps = mirrored["sgd"]
    check_losses(steps)
    for step in steps:
        differences = {**step["weights"], **{name + " (key bias)": d for name, d in step["key_bias"].items()}}
        assert max(differences.values()) <= ROUNDING, {name: d for name, d in differences.items() if d > ROUNDING}
        assert min(step["moved"].values()) > 1000 * ROUNDING  # every weight the steps changed, by far more
        for difference, largest in step["optimizer"]:  # sgd's: the iteration count and learning rate
            assert difference == 0


def test_mirrored_adam_makes_the_update_of_one_device(mirrored):
    """Two steps accumulating two windows per replica; Adam's moments are sums of the gradients
    (and of their squares), equal to rounding relative to each variable's largest."""
    learning_rate, accumulates = MIRRORED_STEPS["adam"]
    tolerance = ROUNDING + learning_rate / 10  # see key_bias
    steps = mirrored["adam"]
    check_losses(steps)
    for n, step in enumerate(steps, 1):
        too_far = {name: d for name, d in step["weights"].items() if d > tolerance}
        assert not too_far, too_far
        assert max(step["key_bias"].values()) <= 2 * learning_rate * n  # each step: +-learning_rate at most
        assert min(step["moved"].values()) > 5 * tolerance
        for difference, largest in step["optimizer"]:
            assert difference <= 1e-5 * largest


def test_mirrored_bfloat16_replicas_read_copies_of_the_updated_weights(mirrored):
    """Each update writes every replica's bfloat16 copies (`fast.weight_copies`): after each step
    they are the float32 weights converted, and the next step's loss is one device's, to
    bfloat16's rounding (0.4%)."""
    for step in mirrored["bfloat16"]:
        assert step["copies"] == 0
        np.testing.assert_allclose(step["losses"][1], step["losses"][0], rtol=1e-2)


def test_a_cluster_needs_a_seed(monkeypatch):
    """Without --seed each worker would draw its own seed, and take its rows of other windows."""
    import train
    flags = {name: p.default for name, p in inspect.signature(train.train_model).parameters.items()}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="--seed is needed when TF_CONFIG names a cluster"):
        train.check_flags(**{**flags, "dataset": "data.txt"})
    assert train.check_flags(**{**flags, "dataset": "data.txt", "seed": 7})["seed"] == 7


def free_ports(n):
    """n ports of 127.0.0.1 that no one listens on now, as TensorFlow's own multi-worker tests pick them."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def loopback_only():
    """The command prefix that runs a command in a network namespace of its own, whose only interface
    is loopback: TensorFlow's gRPC server listens on every interface whatever address TF_CONFIG gives
    (0.0.0.0 is fixed in its grpc_server_lib.cc). [] where this Linux does not let the user make one."""
    prefix = ["unshare", "--user", "--map-root-user", "--net"]
    if shutil.which("unshare") and shutil.which("ip") and subprocess.run(
            [*prefix, "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0:
        return prefix
    warnings.warn("no network namespace (unshare --user --net): the test's TensorFlow servers listen on every "
                  "interface while it runs")
    return []


def train_command(folder, flags):
    """train.py's command line with its run folder in folder/checkpoint."""
    return [sys.executable, TRAIN, *flags, "--checkpoint_dir", os.path.join(folder, "checkpoint")]


def start_workers(folders, flags, cluster):
    """A shell that runs train.py in each folder (its samples/ go there) as worker i of the cluster,
    writing its stderr to FOLDER.err and its exit status to FOLDER.code; the shell and the workers in
    a process group of their own, and a network namespace when loopback_only allows."""
    prefix = loopback_only()
    lines = ["ip link set lo up || exit 1"] if prefix else []
    for i, folder in enumerate(folders):
        os.makedirs(folder)
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        lines.append(f"(cd {shlex.quote(folder)} && TF_CONFIG={shlex.quote(tf_config)} "
                     f"{shlex.join(train_command(folder, flags))} </dev/null >/dev/null 2>{shlex.quote(folder + '.err')}; "
                     f"echo $? >{shlex.quote(folder + '.code')}) &")
    env = {name: value for name, value in os.environ.items() if name != "TF_CONFIG"}
    return subprocess.Popen([*prefix, "sh", "-c", "\n".join(lines + ["wait"])], env=env, start_new_session=True)


def start_single(folder, flags):
    """train.py in `folder` without TF_CONFIG, its stderr to FOLDER.err."""
    os.makedirs(folder)
    env = {name: value for name, value in os.environ.items() if name != "TF_CONFIG"}
    with open(f"{folder}.err", "w") as err:
        return subprocess.Popen(train_command(folder, flags), cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)


def exit_code(folder):
    """The exit status start_workers wrote for the worker in `folder`; None while it runs."""
    try:
        with open(f"{folder}.code") as f:
            return int(f.read())
    except (FileNotFoundError, ValueError):
        return None


def wait_all(codes, timeout):
    """Waits until each of codes {name: function giving an exit status or None} gives a status, one
    gives a failure, or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [code() for code in codes.values()]
        if None not in found or any(found):
            return
        time.sleep(0.2)


def logged(run_dir, tag):
    """{step: value} of the scalar summary `tag` in the run folder's event files."""
    return {step: float(tf.make_ndarray(value.tensor)) for name, step, value in summaries(run_dir) if name == tag}


def test_two_workers_make_the_update_of_one_process_with_twice_the_batch(tmp_path, models_dir, tiny_model):
    """Two train.py workers of --batch_size b against one of 2b, accumulating 2 batches a step: the
    chief's saved weights, losses and state are the single process's; the other worker writes nothing."""
    dataset = tmp_path / "data.txt"
    dataset.write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog, {i * i} times.\n"
                               for i in range(60)))
    flags = ["--dataset", str(dataset), "--model_name", tiny_model, "--models_dir", models_dir, "--steps", "2",
             "--sequence_length", str(LENGTH), "--accumulate_gradients", "2", "--sample_every", "0", "--seed", "7",
             "--optimizer", "sgd", "--learning_rate", "0.1"]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    folders = [str(tmp_path / f"worker{i}") for i in range(2)]
    workers = single = None
    try:
        workers = start_workers(folders, [*flags, "--batch_size", str(BATCH)], cluster)
        single = start_single(str(tmp_path / "single"), [*flags, "--batch_size", str(2 * BATCH)])
        codes = {"worker0": lambda: exit_code(folders[0]), "worker1": lambda: exit_code(folders[1]),
                 "single": single.poll}
        wait_all(codes, timeout=300)
        for name, code in codes.items():
            assert code() == 0, f"{name}: {'still running' if code() is None else code()}\n" \
                                + (tmp_path / f"{name}.err").read_text()
    finally:
        if workers is not None and workers.poll() is None:
            os.killpg(workers.pid, signal.SIGKILL)  # the shell's group: the workers it started
            workers.wait()
        if single is not None and single.poll() is None:
            single.kill()
            single.wait()
    chief, single = (str(tmp_path / name / "checkpoint" / "run1") for name in ("worker0", "single"))
    assert os.listdir(tmp_path / "worker1") == []  # no run folder, no samples folder
    assert saving.saved_steps(chief) == saving.saved_steps(single) == [2]
    weights, expected, start = (tf.train.load_checkpoint(prefix) for prefix in (
        os.path.join(chief, "model-2"), os.path.join(single, "model-2"),
        os.path.join(models_dir, tiny_model, "model.ckpt")))
    for name in expected.get_variable_to_shape_map():
        np.testing.assert_allclose(weights.get_tensor(name), expected.get_tensor(name), atol=ROUNDING, rtol=0,
                                   err_msg=name)
        assert np.abs(expected.get_tensor(name) - start.get_tensor(name)).max() > 1000 * ROUNDING, name
    state, expected_state = (tf.train.load_checkpoint(os.path.join(run_dir, "state-2")) for run_dir in (chief, single))
    assert [state.get_tensor(name) for name in saving.STATE] == [2, 2 * 2 * 2 * BATCH, 7]  # step, windows, seed
    assert [expected_state.get_tensor(name) for name in saving.STATE] == [2, 2 * 2 * 2 * BATCH, 7]
    losses, expected_losses = logged(chief, "loss"), logged(single, "loss")
    assert sorted(losses) == sorted(expected_losses) == [1, 2]
    np.testing.assert_allclose([losses[1], losses[2]], [expected_losses[1], expected_losses[2]], rtol=LOSS_RTOL)


if __name__ == "__main__":
    print(json.dumps(mirrored_steps(sys.argv[1])))
