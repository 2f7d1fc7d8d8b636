"""Download a GPT-2 checkpoint from OpenAI's storage, or from a mirror, into MODELS_DIR/MODEL/.

Usage:
    python3 download_model.py 124M                   # or 355M, 774M, 1558M
    python3 download_model.py 1558M --models_dir /data/gpt2
    python3 download_model.py 124M --base_url https://mirror.example/gpt-2
    GPT2_BASE_URL=https://mirror.example/gpt-2 python3 download_model.py 124M

Each file comes from {base_url}/models/{MODEL}/{file}. It is written to FILE.part and renamed to
FILE only once its size and, when the server sends one, its MD5 (Content-MD5, the base64 of the
digest, as Azure Blob Storage sends it) check out. The size is the Content-Length; when a server
sends none, a HEAD request asks for it, so that a cut transfer is not taken for a whole file.
Whatever the server says, a file of a released model must also have the size and SHA-256 of
OpenAI's file where a value is known (RELEASED: the size of every file of the four models; the
SHA-256 of every file of 124M, of every file but the weights of 355M and 1558M, and of 774M's
checkpoint, hparams.json, encoder.json and vocab.bpe), and a body that ends short of that size
while the server gave none is refused. An HTML page where a file should be (a login or error
page) is refused. A FILE.part left by an interrupted run is continued with an HTTP
Range request, or started again from byte 0 when the server ignores Range.

Connection errors, timeouts, cut transfers, stalls (fewer than 64 KiB in GPT2_DOWNLOAD_STALL
seconds, default 30), 429 and 5xx answers are retried, after the server's Retry-After when it
sends one (up to 5 minutes; a longer one ends the run) and otherwise with exponential backoff
(GPT2_DOWNLOAD_BACKOFF sets the first delay, in seconds, default 1); other 4xx answers are not.

Once the files are in, the model is loaded as the sampling scripts load it: hparams.json, every
checkpoint variable with its shape and bytes, the meta graph, the vocabulary. A file that fails
is deleted, so that running the same command again fetches it. The check imports TensorFlow and
src/ (it is skipped with a note where either is missing) and GPT2_DOWNLOAD_CHECK=0 skips it.

MODELS_DIR/.MODEL.download.json records the size, MD5 and modification time of each verified
file and whether the model loaded. A re-run keeps a file whose size and time match without asking
the server, hashes again one whose time changed, and replaces one whose size or MD5 differ; a
file without a record (from an older download) is compared with the server's size and MD5 (HEAD).
Runs for the same model take turns through the lock file MODELS_DIR/.MODEL.download.lock.

Expected failures print one line on stderr, ending with the command to run when running again
can repair them, and exit with 1 (2 for a bad argument, 130 for Ctrl-C), never a traceback.
"""
import argparse
import base64
import contextlib
import dataclasses
import datetime
import email.utils
import errno
import hashlib
import itertools
import json
import os
import re
import shlex
import sys
import time

import requests
import urllib3
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: runs of the same model do not take turns there
    fcntl = None

MODELS = ("124M", "355M", "774M", "1558M")
FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
         "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2"
ATTEMPTS = 5  # failed attempts in a row, none of them adding bytes, before giving up on a file
BACKOFF_S = 1.0  # delay before the first retry; it doubles with each failure in a row
MAX_WAIT_S = 300.0  # the longest Retry-After waited for; a longer one ends the run
STALL_BYTES = 1 << 16  # a transfer receiving fewer bytes than this in STALL_S seconds has stalled
STALL_S = 30.0
TIMEOUT_S = (10, 60)  # (connect, longest silence while reading)
CHUNK_BYTES = 1 << 16
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")
_HTML_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*(?:<!doctype html|<html)", re.IGNORECASE)
_HTML_TYPES = ("text/html", "application/xhtml+xml")
# The readable part of urllib3's nested exception texts.
_REASON = re.compile(r"\[Errno -?\d+\] [^'\")]+|Read timed out|Connection broken: [^']*")
# Where a lock file or record cannot be written, nothing else can be either: run without them.
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


@dataclasses.dataclass(frozen=True)
class Released:
    """A file as OpenAI released it: its size in bytes and SHA-256 (hex), None where unknown."""
    size: int | None = None
    sha256: str | None = None


# The files that are the same for every model: encoder.json and vocab.bpe, byte for byte
# tests/gpt2-vocab's (test_download.py holds these values to them), and checkpoint, which names
# model.ckpt.
_EVERY_MODEL = {
    "encoder.json": Released(
        1042301, "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "vocab.bpe": Released(
        456318, "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "checkpoint": Released(
        77, "dd1b025d2e155283f5e300ce95bf6d5b6bc0f7fe010db73daa6975eb896ab9cb"),
}
# Published values, each with its source, and the values that follow from the shapes.
# Sizes of 124M and 355M: rasbt/LLMs-from-scratch, ch05/01_main-chapter-code/tests.py
# (test_model_files, which asks OpenAI's storage with HEAD). SHA-256 of 124M:
# MontrealAI/AGI-Alpha-Agent-v0, scripts/download_openai_gpt2.py (CHECKSUMS), whose values for
# encoder.json, vocab.bpe, checkpoint and hparams.json are those of the files' known bytes.
# SHA-256 of every file of 355M and 1558M but the weights, and the size of 1558M's
# model.ckpt.meta: the copy of OpenAI's files in icemagno/ai-models (commit 5c0c675, models/),
# whose 124M files have every size and SHA-256 above; hobg0blin/ganterbury-tales (commit
# da18c90) holds the same 355M model.ckpt.index and model.ckpt.meta (their Git LFS pointers).
# Derived for 774M (and 1558M where it says so), each rule giving the published values of the
# other models (test_download.py holds them to it):
# - the weights: a checkpoint's data file is its float32 variables back to back, 4 bytes a
#   parameter of src/model.py's checkpoint_shapes;
# - model.ckpt.index: what TF1's Saver writes for OpenAI's names and shapes, in sorted order
#   (1558M's 20,724 bytes are also the 20.7 kB of the copy at
#   https://huggingface.co/aisuko/gpt-2-1.5B-ggml/tree/main/original);
# - model.ckpt.meta: OpenAI's training graph, which grows by 37,947 bytes a layer beyond 124M's
#   12 (layers h12 and up; their names have two digits, as h10's and h11's);
# - hparams.json: OpenAI's text for the shape, bytes and SHA-256 (checkpoint's text is every
#   model's).
RELEASED = {
    "124M": {
        **_EVERY_MODEL,
        "hparams.json": Released(
            90, "d9d56e4121c427164e0c55c6f03c08e1daf9002b9b672825112d19097b680318"),
        "model.ckpt.data-00000-of-00001": Released(
            497759232, "2060c885360cc0cf41d7a6dbc4d24b5127aae20260c8b5ae521b5a6578407118"),
        "model.ckpt.index": Released(
            5215, "71916f763f9746f9b2a06b12d91996cf1084ae008d0424543d39391c5f2dc687"),
        "model.ckpt.meta": Released(
            471155, "4668c448fa11531fd6700460487f73e82d3272960cea942252f8744bf225c77b"),
    },
    "355M": {
        **_EVERY_MODEL,
        "hparams.json": Released(
            91, "310dfdb1f0c786b79d93459eaa470f3978d873bdc3e1f9fed1cad24d9dd0b1f6"),
        "model.ckpt.data-00000-of-00001": Released(1419292672),
        "model.ckpt.index": Released(
            10399, "4490e7b1f5ec0abfc1e111fcd27cdda7cb280c597ba0a885c364134e62ce43aa"),
        "model.ckpt.meta": Released(
            926519, "06e1a92057d2a4fbdc483bd1f61a26cc274f1c999b84c6d9e9c50aa8d5ead44a"),
    },
    "774M": {
        **_EVERY_MODEL,
        "hparams.json": Released(
            91, "55485135775c1ed186dd09e372e74d2617ee7dc2cf7b54de26960fb5192dbacf"),
        "model.ckpt.data-00000-of-00001": Released(4 * 774_030_080),
        "model.ckpt.index": Released(15535),
        "model.ckpt.meta": Released(1381883),
    },
    "1558M": {
        **_EVERY_MODEL,
        "hparams.json": Released(
            91, "647420ef8cf586f8933899000aa50c1996eaca50e4dc6fbd25bfdc64f4207bbf"),
        "model.ckpt.data-00000-of-00001": Released(4 * 1_557_611_200),
        "model.ckpt.index": Released(
            20724, "3a968cd212647a6007ddf7d6c9f52c9b158d0e9aabc9206390709c37d4175e5e"),
        "model.ckpt.meta": Released(
            1837247, "0bba0140dbafca5282c11610908aebcfec35070973c87836a81b985d2f620817"),
    },
}


def released(model: str, filename: str) -> Released:
    """What is known of `filename` of `model` as OpenAI released it (nothing for other models).

    >>> released("124M", "vocab.bpe").size
    456318
    """
    return RELEASED.get(model, {}).get(filename, Released())


class DownloadError(Exception):
    """An expected failure (HTTP status, network, checksum), reported as one line.

    `rerun_helps` says whether running the same command again can repair it (a cut transfer, a
    deleted bad file), so that the message can end with that command. `hint`, said in brackets
    after it, is this script's advice on where the file comes from (its flags), which another
    caller of `fetch_file` replaces with its own; `bare` is the message without it.
    """

    def __init__(self, message, *, rerun_helps=False, hint=None):
        super().__init__(message if hint is None else f"{message} ({hint})")
        self.bare, self.rerun_helps, self.hint = message, rerun_helps, hint


class RetryableError(DownloadError):
    """A failure another attempt may cure: a 429 or 5xx answer, a cut transfer, a refused resume."""

    def __init__(self, message, *, retry_after=None):
        super().__init__(message, rerun_helps=True)
        self.retry_after = retry_after  # seconds the server asked to wait, if it said


class StalledError(RetryableError):
    """The server sends too few bytes; retried, but a stall is a failure whatever it added."""


class LoadError(DownloadError):
    """The files are in but the model does not load; `names` are the files to blame."""

    def __init__(self, names, reason):
        super().__init__(reason, rerun_helps=True)
        self.names = names


RETRYABLE = (RetryableError, requests.ConnectionError, requests.Timeout,
             requests.exceptions.ChunkedEncodingError)


@dataclasses.dataclass(frozen=True)
class Limits:
    """How long to keep trying a file: retries, their delays, and when a slow server has stalled."""
    attempts: int = ATTEMPTS
    backoff_s: float = BACKOFF_S
    max_wait_s: float = MAX_WAIT_S
    stall_bytes: int = STALL_BYTES
    stall_s: float = STALL_S


def check_model_name(name: str) -> str:
    """Return `name` if it is a plain folder name, so nothing can land outside models_dir.

    >>> check_model_name("124M")
    '124M'
    """
    if not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ValueError("invalid model name: use letters, digits, '.', '_' and '-', starting "
                         f"with a letter or digit, e.g. {', '.join(MODELS)}. Received: {name!r}")
    return name


def check_base_url(base_url: str) -> str:
    """Return `base_url` without its trailing slash, or raise ValueError if it is not http(s)."""
    if not re.match(r"https?://[^/]", base_url):
        raise ValueError("the base URL must start with http:// or https://. "
                         f"Received: {base_url!r}")
    return base_url.rstrip("/")


def repair_command(model: str, models_dir: str, base_url: str) -> str:
    """The command line that runs this download again, with the flags that differ from defaults:
    src/paths.py's download_command, and --base_url (this script runs without src/).

    >>> repair_command("124M", "models", DEFAULT_BASE_URL)
    'python3 download_model.py 124M'
    """
    words = ["python3", "download_model.py", model]
    if os.path.normpath(models_dir) != "models":
        words += ["--models_dir", models_dir]
    if base_url.rstrip("/") != DEFAULT_BASE_URL:
        words += ["--base_url", base_url]
    return shlex.join(words)


def download_model(model: str, *, models_dir: str = "models", base_url: str = DEFAULT_BASE_URL,
                   limits: Limits = Limits(), check: bool = True) -> None:
    """Fetch the seven files of `model` into `models_dir/model`, then check that the model loads.

    Files that the record shows verified and unchanged are kept without asking the server.
    `check=False` skips loading the model (which imports TensorFlow).
    """
    check_model_name(model)
    base_url = check_base_url(base_url)
    created = _make_dirs(models_dir)
    try:
        with _taking_turns(models_dir, model):
            _download_in_turn(model, models_dir, base_url, limits, check)
    except DownloadError as exc:
        if not exc.rerun_helps:
            raise
        command = repair_command(model, models_dir, base_url)
        raise DownloadError(f"{exc}; run `{command}` again") from exc
    finally:
        _remove_empty(created)  # a failed first download leaves no empty folder behind


def _download_in_turn(model, models_dir, base_url, limits, check):
    """The download itself, while this run holds the model's lock."""
    folder = os.path.join(models_dir, model)
    created = _make_dirs(folder)  # again: a run that failed before this one may have removed it
    try:
        record_path = os.path.join(models_dir, f".{model}.download.json")
        record = _read_record(record_path)
        with requests.Session() as session:
            # Content-Length and Content-MD5 describe the stored bytes, not a compressed stream.
            session.headers["Accept-Encoding"] = "identity"
            for filename in FILES:
                _ensure_file(session, f"{base_url}/models/{model}/{filename}",
                             os.path.join(folder, filename), record, record_path, limits,
                             released(model, filename))
        if check and not record["loads"]:
            _check_and_record(model, models_dir, record, record_path)
    finally:
        _remove_empty(created)


def _ensure_file(session, url, path, record, record_path, limits, known):
    """Keep the file at `path` if it is still verified, else fetch it; keep the record current.

    `known` is what OpenAI released as this file (a Released)."""
    name = os.path.basename(path)
    entry = _existing_entry(session, url, path, record["files"].get(name), limits, known)
    if entry is not None:
        print(f"{path}: already downloaded")
    else:
        entry = _entry(path, fetch_file(session, url, path, limits=limits, released=known))
        record["loads"] = False
    if entry != record["files"].get(name):
        record["files"][name] = entry
        _write_record(record_path, record)


def _existing_entry(session, url, path, entry, limits, known):
    """The record entry of the file at `path` if it is the verified file, else None.

    A file that is not is deleted first, so that no bad file stays under its name while the new
    one downloads.
    """
    if not os.path.isfile(path):
        return None
    if known.size is not None and _size(path) != known.size:
        entry, problem = None, f"{_size(path)} bytes, OpenAI's file has {known.size}"
    elif entry is None:
        entry, problem = _against_server(session, url, path, limits, known)
    else:
        entry, problem = _against_record(path, entry)
    if problem is None:
        return entry
    tqdm.write(f"{path}: {problem}; downloading it again", file=sys.stderr)
    os.remove(path)
    return None


def _against_record(path, entry):
    """(entry, None) if `path` still has the recorded size and MD5, else (None, what differs)."""
    stat = os.stat(path)
    if stat.st_size != entry["size"]:
        return None, f"{stat.st_size} bytes, {entry['size']} when it was downloaded"
    if stat.st_mtime_ns == entry["mtime_ns"]:
        return entry, None
    md5 = _base64(_hashed(path, hashlib.md5())[0])  # touched since: only its bytes can tell
    if md5 != entry["md5"]:
        return None, f"changed since it was downloaded (MD5 {md5}, was {entry['md5']})"
    return {**entry, "mtime_ns": stat.st_mtime_ns}, None


def _against_server(session, url, path, limits, known):
    """(entry, None) if `path` has the size and checksums OpenAI's file has, or else the server
    gives, else (None, what differs). The server is not asked what RELEASED knows."""
    if known.sha256 is not None:  # nothing the server says could add to it
        size, server_md5 = known.size, None
    else:
        size, server_md5 = _server_file(session, url, limits)
        size = size if size is not None else known.size
    actual = _size(path)
    if size is None:
        return None, "the server does not give its size, so it cannot be checked"
    if actual != size:
        return None, f"{actual} bytes, the server has {size}"
    md5, sha256 = _hashed(path, hashlib.md5(), hashlib.sha256())
    local = _base64(md5)
    if server_md5 is not None and local != server_md5:
        return None, f"MD5 {local}, the server has {server_md5}"
    if known.sha256 is not None and sha256.hexdigest() != known.sha256:
        return None, f"SHA-256 {sha256.hexdigest()}, OpenAI's file has {known.sha256}"
    return _entry(path, local), None


def _server_file(session, url, limits):
    """(size, MD5) of the file at `url` as a HEAD request gives them; None for what it omits."""
    def head():
        with session.head(url, timeout=TIMEOUT_S, allow_redirects=True) as response:
            if response.status_code in (405, 501):  # no HEAD on this server: nothing learned
                return None, None
            if response.status_code != 200:
                raise _status_error(response)
            _refuse_html_type(response)
            return _announced_size(response, 0), _announced_md5(response)
    try:
        return _retrying(head, name=url.rsplit("/", 1)[-1], limits=limits)
    except DownloadError as exc:
        raise DownloadError(f"HEAD {url}: {exc.bare}", rerun_helps=exc.rerun_helps, hint=exc.hint) from exc
    except requests.RequestException as exc:
        raise DownloadError(f"HEAD {url}: {_describe(exc)}", rerun_helps=True) from exc


def fetch_file(session: requests.Session, url: str, path: str, *,
               limits: Limits = Limits(), released: Released = Released()) -> str:
    """Download `url` to `path` through `path.part`, renaming it only when complete and verified:
    of the size and MD5 the server gives, and the size and SHA-256 of `released` where known.

    Returns the file's MD5 (base64).
    """
    part = path + ".part"
    try:
        md5 = _retrying(lambda: _fetch_once(session, url, part, limits, released),
                        name=os.path.basename(path), limits=limits, progress=lambda: _size(part))
    except DownloadError as exc:
        raise DownloadError(f"GET {url}: {exc.bare}", rerun_helps=exc.rerun_helps, hint=exc.hint) from exc
    except requests.RequestException as exc:
        raise DownloadError(f"GET {url}: {_describe(exc)}", rerun_helps=True) from exc
    os.replace(part, path)
    return md5


def _retrying(attempt, *, name, limits, progress=lambda: 0):
    """Call `attempt()` until it succeeds or `limits.attempts` failures in a row made no headway."""
    failures = 0
    while True:
        before = progress()
        try:
            return attempt()
        except RETRYABLE as exc:
            # A flaky link may cut a 6 GB transfer many times: only failures that add nothing count,
            # and a stall, which adds a trickle, always does.
            progressed = progress() > before and not isinstance(exc, StalledError)
            failures = 1 if progressed else failures + 1
            if failures >= limits.attempts:
                raise RetryableError(f"{_describe(exc)} (gave up after {failures} attempts "
                                     "in a row)") from exc
            delay = _retry_delay(exc, failures, limits)
            tqdm.write(f"{name}: {_describe(exc)}; retrying in {delay:g} s", file=sys.stderr)
            time.sleep(delay)


def _retry_delay(exc, failures, limits):
    """Seconds before the next attempt: the server's Retry-After if it sent one, else backoff."""
    wait = getattr(exc, "retry_after", None)
    if wait is None:
        return limits.backoff_s * 2 ** (failures - 1)
    if wait > limits.max_wait_s:
        raise DownloadError(f"{_describe(exc)}: the server asks to wait {wait:.0f} s, longer than "
                            f"the {limits.max_wait_s:g} s this waits", rerun_helps=True)
    return wait


def _fetch_once(session, url, part, limits, known):
    """One GET of `url` into `part`, continuing from the size `part` already has when allowed.

    Returns the MD5 (base64) of the verified file.
    """
    offset = _size(part)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
        start = _body_start(response, offset, part)
        _refuse_html_type(response)
        size = _announced_size(response, start)
        _refuse_other_size(size, known, part)  # before a body that cannot be the file arrives
        digests = _hashed(part, hashlib.md5(), hashlib.sha256()) if start else \
            (hashlib.md5(), hashlib.sha256())
        _receive(response, part, start, size, limits, digests)
    md5 = _announced_md5(response)
    if size is None:  # the body ended where the connection did: whole, or cut?
        size, head_md5 = _size_if_told(session, url)
        md5 = md5 or head_md5
        _refuse_other_size(size, known, part)
        size = _size_when_untold(part, size, known)
    return _verify(part, size, digests, md5, known)


def _refuse_other_size(size, known, part):
    """Raise, deleting `part`, if the server's file has another size than OpenAI's."""
    if size is not None and known.size is not None and size != known.size:
        _remove(part)
        raise DownloadError(f"the server's file has {size} bytes, OpenAI's has {known.size}: it is "
                            "not the released file", hint="check --base_url or GPT2_BASE_URL")


def _size_when_untold(part, size, known):
    """The size to hold `part` to: the server's, else OpenAI's; raise if `part` falls short of
    OpenAI's size while the server gave none.

    Such a body is a cut transfer or a mirror's short copy, and nothing tells which. Retrying at
    once would loop against a short copy, so the run ends, saying to run it again: that run
    resumes `part` with a Range request.
    """
    if size is not None or known.size is None:
        return size
    actual = _size(part)
    if actual < known.size:
        raise DownloadError(f"the body ended at byte {actual} of {known.size} without the server "
                            "giving a size: the transfer was cut, or the mirror's copy is short",
                            rerun_helps=True)
    return known.size


def _body_start(response, offset, part):
    """Where in `part` the body of `response` begins; raise for any other answer than 200/206."""
    status = response.status_code
    if status == 200:
        return 0
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if status == 206 and match and int(match.group(1)) == offset:
        return offset
    if status in (206, 416):  # the partial file does not fit what the server holds now
        _remove(part)
        raise RetryableError(f"HTTP {status} {response.reason or ''}".strip()
                             + f": cannot resume at byte {offset}, starting again")
    if status in (404, 410):  # the server has no such file: a part of it is no use
        _remove(part)
    raise _status_error(response)


def _status_error(response):
    """The error for an answer that is not the file: 429 and 5xx are retried, the others not."""
    status = response.status_code
    reason = f"HTTP {status} {response.reason or ''}".strip()
    if status == 429 or status >= 500:
        return RetryableError(reason, retry_after=_retry_after(response))
    return DownloadError(reason, hint="check the model name, or point --base_url or GPT2_BASE_URL at a mirror")


def _retry_after(response):
    """Seconds the server asks to wait (Retry-After: seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if re.fullmatch(r"[0-9]+", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": the date is UTC, as HTTP dates are
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _refuse_html_type(response):
    """Raise if the server labels its answer an HTML page, which none of the files is."""
    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind in _HTML_TYPES:
        raise _html_error(kind)


def _html_error(kind):
    """The error for an HTML page (a login, error or index page) served instead of a file."""
    return DownloadError(f"the server sent an HTML page ({kind}), not the file",
                         hint="check --base_url or GPT2_BASE_URL")


def _announced_size(response, start):
    """Size of the whole file: bytes already kept plus Content-Length, or None if not sent."""
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    if not length.strip().isdigit():
        raise DownloadError(f"bad Content-Length {length!r}")
    return start + int(length)


def _announced_md5(response):
    """The base64 MD5 of the whole file if the server sends one, else None.

    Azure sends the blob's MD5 as Content-MD5 on a full GET and as x-ms-blob-content-md5 on a Range
    GET; a Content-MD5 on another server's 206 is taken to cover the whole file too.
    """
    value = response.headers.get("x-ms-blob-content-md5") or response.headers.get("Content-MD5")
    return value.strip() if value else None


def _size_if_told(session, url):
    """(size, MD5) from a HEAD request, or (None, None) if the server does not say."""
    try:
        with session.head(url, timeout=TIMEOUT_S, allow_redirects=True) as response:
            if response.status_code != 200:
                return None, None
            return _announced_size(response, 0), _announced_md5(response)
    except (DownloadError, requests.RequestException):
        return None, None  # the checks that follow the download still apply


def _receive(response, part, start, size, limits, digests):
    """Write the body into `part` from byte `start` with a progress bar, adding it to `digests`
    (hashlib objects holding the first `start` bytes)."""
    chunks = _arriving(response, limits)
    first = next(chunks, b"")
    if not start and _HTML_START.match(first):  # checked before `part` is emptied
        raise _html_error(response.headers.get("Content-Type") or "no Content-Type")
    name = os.path.basename(part)[:-len(".part")]
    with open(part, "ab" if start else "wb") as file, \
            tqdm(desc=name, total=size, initial=start, unit="B", unit_scale=True,
                 unit_divisor=1024) as bar:
        for chunk in itertools.chain((first,), chunks):
            file.write(chunk)
            for digest in digests:
                digest.update(chunk)
            bar.update(len(chunk))
        file.flush()
        os.fsync(file.fileno())  # the rename that follows must not outrun the data


def _arriving(response, limits):
    """The body of `response` in pieces as they arrive; raise StalledError if too few arrive.

    read1 returns what the connection has instead of waiting for a whole chunk, so a server that
    trickles a few bytes at a time, never silent long enough for the read timeout, is noticed.
    """
    since, received = time.monotonic(), 0
    while chunk := _read1(response):
        yield chunk
        received += len(chunk)
        elapsed = time.monotonic() - since
        if elapsed >= limits.stall_s:
            if received < limits.stall_bytes:
                raise StalledError(f"stalled: {received} bytes in {elapsed:.1f} s, fewer than "
                                   f"{limits.stall_bytes}")
            since, received = time.monotonic(), 0


def _read1(response):
    """One read1 of the body, with urllib3's errors turned into those iter_content raises."""
    try:
        return response.raw.read1(CHUNK_BYTES, decode_content=True)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc


def _verify(part, size, digests, md5, known):
    """Return the MD5 if `part` has the announced size and MD5 and the SHA-256 OpenAI's file has
    where known; a wrong one also deletes `part`. `digests`: (MD5, SHA-256) of `part`."""
    actual = _size(part)
    if size is not None and actual < size:
        raise RetryableError(f"transfer cut at byte {actual} of {size}")
    received, sha256 = _base64(digests[0]), digests[1].hexdigest()
    if (size is not None and actual > size) or (md5 is not None and received != md5):
        os.remove(part)  # so that a re-run starts clean
        raise DownloadError(f"corrupt download: {actual} bytes with MD5 {received}, expected "
                            f"{size} bytes with MD5 {md5}; deleted it", rerun_helps=True)
    if known.sha256 is not None and sha256 != known.sha256:
        os.remove(part)
        raise DownloadError(f"corrupt download: SHA-256 {sha256}, OpenAI's file has "
                            f"{known.sha256}; deleted it", rerun_helps=True,
                            hint="a mirror's other file? check --base_url or GPT2_BASE_URL")
    return received


# --- Checking that the model loads ----------------------------------------------------------

def check_model(model: str, models_dir: str) -> bool:
    """Load `models_dir/model` as the sampling scripts do; raise LoadError naming files to blame.

    Returns False, after a note on stderr, when TensorFlow or src/ is missing and nothing was
    checked.
    """
    try:
        tf, model_lib, encoder_lib, decode_error = _loaders()
    except ImportError as exc:
        tqdm.write(f"note: {model} was not test-loaded ({exc}); the sampling scripts will load it",
                   file=sys.stderr)
        return False
    folder = os.path.join(models_dir, model)
    failures = (OSError, ValueError, TypeError, IndexError, tf.errors.OpError, decode_error)
    hparams = _blame(["hparams.json"], failures, model_lib.load_hparams, folder)
    prefix = _blame(["checkpoint"], failures, _checkpoint_prefix, model_lib, folder)
    reader = _blame(["model.ckpt.index"], failures, tf.train.load_checkpoint, prefix)
    _blame(["hparams.json", "model.ckpt.index"], failures,
           lambda: model_lib.check_checkpoint(reader.get_variable_to_shape_map(), hparams))
    _blame([FILES[3]], failures, _read_every_variable, reader)
    _blame(["model.ckpt.meta"], failures, _parse_meta_graph, tf, prefix + ".meta")
    enc = _blame(["encoder.json", "vocab.bpe"], failures, encoder_lib.get_encoder, model,
                 models_dir)
    _blame(["vocab.bpe"], failures, _check_merges, enc)
    return True


def _loaders():
    """TensorFlow, src/model.py, src/encoder.py and protobuf's DecodeError, imported only now:
    TensorFlow is slow to import, and a run whose files are all verified needs none of them."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
    if not os.path.isfile(os.path.join(src, "model.py")):
        raise ImportError(f"no {src}{os.sep}model.py")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter
    if src not in sys.path:
        sys.path.insert(0, src)
    import encoder
    import model
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    tf.get_logger().setLevel("ERROR")  # a bad `checkpoint` file is reported here, in one line
    return tf, model, encoder, DecodeError


def _blame(names, failures, function, *args):
    """`function(*args)`, or a LoadError blaming the files `names` for one of `failures`."""
    try:
        return function(*args)
    except failures as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever TF says
        raise LoadError(names, reason) from exc


def _checkpoint_prefix(model_lib, folder):
    """The prefix `checkpoint` names, which must be the downloaded model.ckpt."""
    prefix = model_lib.find_checkpoint(folder)
    if os.path.abspath(prefix) != os.path.abspath(os.path.join(folder, "model.ckpt")):
        raise ValueError(f"`checkpoint` names {prefix}, not the downloaded model.ckpt")
    return prefix


def _read_every_variable(reader):
    """Read every variable's bytes: a data file that is short or differs from the index's
    checksums fails here."""
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def _parse_meta_graph(tf, path):
    """Parse model.ckpt.meta, which this port does not use but the original's users may."""
    with open(path, "rb") as file:
        tf.compat.v1.MetaGraphDef.FromString(file.read())


def _check_merges(enc):
    """Raise if vocab.bpe has too few merges for encoder.json, as a file cut at a line end has.

    Every token but the 256 bytes and special tokens (<|endoftext|>) is made by one merge.
    """
    special = sum(token.startswith("<|") and token.endswith("|>") for token in enc.encoder)
    unmade = len(enc.encoder) - 256 - len(enc.bpe_ranks) - special
    if unmade > 0:
        raise ValueError(f"vocab.bpe has {len(enc.bpe_ranks)} merges, {unmade} fewer than the "
                         f"{len(enc.encoder)} tokens of encoder.json need: it is cut short")


def _check_and_record(model, models_dir, record, record_path):
    """Check that the model loads; record success, or delete the files to blame and raise."""
    folder = os.path.join(models_dir, model)
    try:
        loaded = check_model(model, models_dir)
    except LoadError as exc:
        for name in exc.names:
            _remove(os.path.join(folder, name))
            record["files"].pop(name, None)
        record["loads"] = False
        _write_record(record_path, record)
        raise DownloadError(f"{folder} does not load, deleted {', '.join(exc.names)}: {exc}",
                            rerun_helps=True) from exc
    if loaded:
        record["loads"] = True
        _write_record(record_path, record)
        print(f"{folder}: the model loads")


# --- What earlier runs verified, and taking turns -------------------------------------------

def _read_record(path):
    """{"files": {name: entry}, "loads": bool} as earlier runs recorded it; empty if unreadable.

    An entry is {"size", "md5", "mtime_ns"} of a verified file; "loads" says the model loaded.
    """
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError):  # unreadable: the files are checked against the server instead
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        data = {"files": {}}
    files = {name: entry for name, entry in data["files"].items()
             if name in FILES and _is_entry(entry)}
    return {"files": files, "loads": data.get("loads") is True and len(files) == len(FILES)}


def _is_entry(entry):
    """Whether `entry` is a well-formed record entry."""
    types = {"size": int, "md5": str, "mtime_ns": int}
    return isinstance(entry, dict) and all(
        type(entry.get(key)) is kind for key, kind in types.items())  # bool is no size


def _entry(path, md5):
    """The record entry of the verified file at `path`, whose MD5 (base64) is `md5`."""
    stat = os.stat(path)
    return {"size": stat.st_size, "md5": md5, "mtime_ns": stat.st_mtime_ns}


def _write_record(path, record):
    """Replace the record atomically, or delete it when it has no file left.

    Where the folder cannot be written (a read-only image) it is left as it is, which only costs
    the next run a check.
    """
    try:
        if not record["files"]:
            _remove(path)
            return
        with open(path + ".part", "w", encoding="utf-8") as file:
            json.dump(record, file, indent=1, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(path + ".part", path)
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise


@contextlib.contextmanager
def _taking_turns(models_dir, model):
    """Hold the model's lock file for the run, waiting while another run holds it.

    Two runs writing the same FILE.part would corrupt each other. The holder deletes the lock file
    on its way out; a run that was waiting then holds a lock on a deleted file, so it locks the
    file now under that name instead.
    """
    path = os.path.join(models_dir, f".{model}.download.lock")
    descriptor = _lock(path)
    try:
        yield
    finally:
        if descriptor is not None:
            _remove(path)
            os.close(descriptor)


def _lock(path):
    """An open descriptor of `path`, locked; None where no lock can be had (read-only, Windows)."""
    if fcntl is None:
        return None
    told = False
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a run that failed removed the folder it had made, now empty
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            continue
        except OSError as exc:
            if exc.errno in _READ_ONLY:
                return None
            raise
        locked = False
        try:
            told = _wait_for_lock(descriptor, path, told)
            locked = _still_named(descriptor, path)
        finally:
            if not locked:
                os.close(descriptor)
        if locked:
            return descriptor


def _wait_for_lock(descriptor, path, told):
    """Lock `descriptor`, saying once that this run waits; return whether it has said so."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return told
    except BlockingIOError:
        pass
    if not told:
        tqdm.write(f"waiting for another download_model.py of this model to finish ({path} is "
                   "locked)", file=sys.stderr)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return True


def _still_named(descriptor, path):
    """Whether `path` still names the file open as `descriptor`."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


# --- Small helpers --------------------------------------------------------------------------

def _make_dirs(path):
    """Create `path` and its missing parents; return those created, outermost first."""
    missing, head = [], path
    while head and not os.path.exists(head):
        missing.append(head)
        head = os.path.dirname(head)
    os.makedirs(path, exist_ok=True)
    return missing[::-1]


def _remove_empty(folders):
    """Remove `folders`, innermost first, as long as they are empty."""
    for folder in reversed(folders):
        try:
            os.rmdir(folder)
        except OSError:  # not empty: it holds files of this or another run
            return


def _remove(path):
    """Delete `path` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _hashed(path, *digests):
    """`digests` (hashlib objects) fed the bytes of `path`, ready to be continued."""
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            for digest in digests:
                digest.update(block)
    return digests


def _base64(digest):
    """A digest as Content-MD5 writes it."""
    return base64.b64encode(digest.digest()).decode("ascii")


def _size(path):
    """Size of `path` in bytes; 0 if it does not exist."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _describe(exc):
    """One line saying what went wrong, without urllib3's nested reprs."""
    if isinstance(exc, DownloadError):
        return str(exc)
    match = _REASON.search(str(exc))
    return " ".join(f"{type(exc).__name__}: {match.group(0) if match else exc}".split())


# --- Command line ---------------------------------------------------------------------------

def _parser():
    """The command line: a model name and a documented flag for each option."""
    parser = argparse.ArgumentParser(
        description="Download a GPT-2 checkpoint into MODELS_DIR/MODEL and check that it loads; "
                    "run it again to resume or to repair a damaged file.",
        epilog="GPT2_DOWNLOAD_BACKOFF: seconds before the first retry (default 1, doubling). "
               "GPT2_DOWNLOAD_STALL: seconds within which a transfer must receive 64 KiB "
               "(default 30). GPT2_DOWNLOAD_CHECK=0: do not load the model once downloaded.")
    parser.add_argument("model", metavar="MODEL",
                        help=f"model to fetch: {', '.join(MODELS[:-1])} or {MODELS[-1]} "
                             "(a mirror may host other names)")
    parser.add_argument("--models_dir", default="models",
                        help="folder that receives MODEL/ (default: models)")
    parser.add_argument("--base_url", default=os.environ.get("GPT2_BASE_URL") or DEFAULT_BASE_URL,
                        help="where the files live, as {base_url}/models/MODEL/FILE (default: "
                             f"$GPT2_BASE_URL, else {DEFAULT_BASE_URL})")
    return parser


def main(argv=None) -> int:
    """Run the command line; expected failures become one line on stderr and an exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        check_model_name(args.model)
        base_url = check_base_url(args.base_url)
        limits = Limits(backoff_s=_seconds_from_env("GPT2_DOWNLOAD_BACKOFF", BACKOFF_S),
                        stall_s=_seconds_from_env("GPT2_DOWNLOAD_STALL", STALL_S, zero=False))
        check = _check_from_env()
    except ValueError as exc:
        return _fail(parser, str(exc), 2)
    try:
        download_model(args.model, models_dir=args.models_dir, base_url=base_url, limits=limits,
                       check=check)
    except KeyboardInterrupt:
        command = repair_command(args.model, args.models_dir, base_url)
        return _fail(parser, f"interrupted; run `{command}` to resume", 130)
    except DownloadError as exc:
        return _fail(parser, str(exc), 1)
    except OSError as exc:
        return _fail(parser, f"cannot write under {args.models_dir!r}: {exc}", 1)
    return 0


def _seconds_from_env(name, default, *, zero=True):
    """Seconds from the environment variable `name` (0 only if `zero`) to 3600, else `default`."""
    text = os.environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not (0 <= value if zero else 0 < value) or value > 3600:
        low = "from 0" if zero else "above 0"
        raise ValueError(f"{name} must be seconds {low} up to 3600. Received: {text!r}")
    return value


def _check_from_env():
    """Whether to load the model once downloaded: GPT2_DOWNLOAD_CHECK, 1 (default) or 0."""
    text = os.environ.get("GPT2_DOWNLOAD_CHECK", "1")
    if text not in ("0", "1"):
        raise ValueError(f"GPT2_DOWNLOAD_CHECK must be 0 or 1. Received: {text!r}")
    return text == "1"


def _fail(parser, message, status):
    """Print `message` as argparse does for errors, and return `status`."""
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
