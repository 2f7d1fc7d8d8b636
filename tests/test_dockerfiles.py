"""The Dockerfiles, checked without a Docker engine.

Each Dockerfile is parsed into its instructions and held to the rest of the project: the base
image is the TensorFlow that requirements.txt pins and the tests run with, every file it copies
exists and reaches the build context, and every command it runs while building is one README.md
tells people to run too. DEVELOPERS.md, which explains the images, is held to the Docker commands
and to the flags of the scripts it documents.
"""
import ast
import itertools
import json
import os
import re
import shlex

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {"cpu": "Dockerfile.cpu", "gpu": "Dockerfile.gpu"}
SAMPLERS = ("src/generate_unconditional_samples.py", "src/interactive_conditional_samples.py")
MODEL_NAMES = {"124M", "355M", "774M", "1558M"}
# Options that change how the image's pip installs, not what it installs.
IMAGE_ONLY_OPTIONS = {"--no-cache-dir"}
SHELL_KEYWORDS = {"do", "then", "else"}
SHELL_ONLY = {"for", "done", "fi", "exit"}


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


def tensorflow_pin():
    """The version in requirements.txt's `tensorflow~=X.Y.Z` (or `==`) line."""
    for line in read("requirements.txt").splitlines():
        match = re.fullmatch(r"tensorflow\s*(?:~=|==)\s*(\d+(?:\.\d+)*)\s*(?:#.*)?", line.strip())
        if match:
            return match.group(1)
    pytest.fail("requirements.txt pins no TensorFlow version; expected a line like tensorflow~=2.20.0")


def copy_sources(args):
    """The sources of a COPY or ADD: every path but the last, in shell or JSON form, flags dropped."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    return [w for w in words if not w.startswith("--")][:-1]


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


def simple_commands(script):
    """The commands a RUN's shell script runs, each as its list of words.

    >>> simple_commands("for m in $MODELS; do python3 download_model.py $m || exit 1; done")
    [['python3', 'download_model.py', '$m']]
    """
    commands = []
    for piece in re.split(r"&&|\|\||;", script):
        words = shlex.split(piece)
        while words and words[0] in SHELL_KEYWORDS:
            words = words[1:]
        if words and words[0] not in SHELL_ONLY:
            commands.append(words)
    return commands


def spelled(words):
    """A command's words as README.md spells them: `pip3` as `pip`, image-only options dropped."""
    return " ".join("pip" if w == "pip3" else w for w in words if w not in IMAGE_ONLY_OPTIONS)


def command_words(words):
    """A command's fixed part, the words before the first variable, as README.md spells it.

    >>> command_words(["pip3", "install", "--no-cache-dir", "-r", "requirements.txt"])
    'pip install -r requirements.txt'
    """
    return spelled(itertools.takewhile(lambda word: "$" not in word, words))


def build_commands(name):
    """The fixed part of every command the Dockerfile's RUN instructions execute."""
    return [command_words(c) for args in arguments(name, "RUN") for c in simple_commands(args)]


def env(name):
    """{variable: value} of a Dockerfile's ENV instructions (`K=V ...` and `K V` forms)."""
    values = {}
    for args in arguments(name, "ENV"):
        if "=" in args.split()[0]:
            values.update(word.split("=", 1) for word in shlex.split(args))
        else:
            key, value = args.split(None, 1)
            values[key] = value
    return values


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


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_base_image_is_the_pinned_tensorflow(variant):
    suffix = "-gpu" if variant == "gpu" else ""
    assert arguments(VARIANTS[variant], "FROM") == [f"tensorflow/tensorflow:{tensorflow_pin()}{suffix}"]


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_copied_files_exist_and_reach_the_build_context(name):
    sources = [s for op in ("COPY", "ADD") for args in arguments(name, op) for s in copy_sources(args)]
    assert sources, f"{name} copies nothing into the image"
    for source in sources:
        assert os.path.exists(os.path.join(REPO, source)), f"{name} copies {source!r}, which does not exist"
        assert not ignored(source), f"{name} copies {source!r}, which .dockerignore leaves out"


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_locale_is_utf8(name):
    assert env(name).get("LANG") == "C.UTF-8"


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_runs_as_a_user_without_root_rights(name):
    users = arguments(name, "USER")
    assert users, f"{name} sets no USER, so the container runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{name} ends as user {users[-1]!r}"


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_build_installs_requirements_and_downloads_models(name):
    commands = build_commands(name)
    assert "pip install -r requirements.txt" in commands
    assert "python3 download_model.py" in commands


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_build_runs_only_what_the_readme_runs(name):
    readme = [f" {spelled(line.replace('`', ' ').split())} " for line in read("README.md").splitlines()]
    for command in build_commands(name):
        assert any(f" {command} " in line for line in readme), (
            f"{name} runs `{command}` while building, which README.md never tells anyone to run")


@pytest.mark.parametrize("name", sorted(VARIANTS.values()))
def test_default_models_are_real_model_names(name):
    defaults = [args for args in arguments(name, "ARG") if args.startswith("MODELS=")]
    assert len(defaults) == 1, f"{name} should have one ARG MODELS=... with a default"
    names = " ".join(shlex.split(defaults[0].split("=", 1)[1])).split()
    assert names and set(names) <= MODEL_NAMES, f"{name}: {defaults[0]} names no known model"
    assert any("$MODELS" in args for args in arguments(name, "RUN")), f"{name} never uses $MODELS"


def test_cpu_and_gpu_images_differ_only_in_the_base_image():
    cpu, gpu = ([i for i in instructions(n) if i[0] != "FROM"] for n in (VARIANTS["cpu"], VARIANTS["gpu"]))
    assert cpu == gpu


@pytest.mark.parametrize("path", ["models/124M/model.ckpt.index", "models/README.md", ".git/HEAD",
                                  ".venv/bin/python", "src/__pycache__/model.cpython-311.pyc",
                                  ".pytest_cache/README.md", ".hypothesis/examples"])
def test_dockerignore_leaves_out(path):
    assert ignored(path)


@pytest.mark.parametrize("path", ["src/model.py", "download_model.py", "requirements.txt", "LICENSE"])
def test_dockerignore_keeps(path):
    assert not ignored(path)


def test_developers_guide_shows_the_docker_commands():
    guide = read("DEVELOPERS.md")
    for command in ("docker build --tag gpt-2 -f Dockerfile.gpu .", "docker run --gpus all -it gpt-2"):
        assert command in guide, f"DEVELOPERS.md should show `{command}`"


@pytest.mark.parametrize("script, heading", [(script, "Sampling flags") for script in SAMPLERS]
                         + [("src/score.py", "Scoring text")])
def test_developers_guide_documents_every_flag(script, heading):
    assert documented_flags(heading) == cli_flags(script), (
        f"DEVELOPERS.md's table under '## {heading}' and {script}'s flags differ")
