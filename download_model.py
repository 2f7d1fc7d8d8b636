"""Download a GPT-2 checkpoint from OpenAI's storage, or from a mirror, into MODELS_DIR/MODEL/.

Usage:
    python3 download_model.py 124M                   # or 355M, 774M, 1558M
    python3 download_model.py 1558M --models_dir /data/gpt2
    python3 download_model.py 124M --base_url https://mirror.example/gpt-2
    GPT2_BASE_URL=https://mirror.example/gpt-2 python3 download_model.py 124M

Each file comes from {base_url}/models/{MODEL}/{file}. It is written to FILE.part and renamed to
FILE only once its size (Content-Length) and, when the server sends one, its MD5 (Content-MD5, the
base64 of the digest, as Azure Blob Storage sends it) check out. A final name therefore always holds
a complete, verified file, and a re-run skips it without asking the server. A FILE.part left by an
interrupted run is continued with an HTTP Range request, or started again from byte 0 when the
server ignores Range. Connection errors, timeouts, cut transfers and 5xx answers are retried with
exponential backoff (GPT2_DOWNLOAD_BACKOFF sets the first delay, in seconds, default 1); 4xx answers
are not. Expected failures print one line on stderr and exit with 1 (2 for a bad argument, 130 for
Ctrl-C), never a traceback.
"""
import argparse
import base64
import hashlib
import os
import re
import sys
import time

import requests
from tqdm import tqdm

MODELS = ("124M", "355M", "774M", "1558M")
FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
         "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2"
ATTEMPTS = 5  # failed attempts in a row, none of them adding bytes, before giving up on a file
BACKOFF_S = 1.0  # delay before the first retry; it doubles with each failure in a row
TIMEOUT_S = (10, 60)  # (connect, longest silence while reading)
CHUNK_BYTES = 1 << 16
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")
# The readable part of urllib3's nested exception texts.
_REASON = re.compile(r"\[Errno -?\d+\] [^'\")]+|Read timed out|Connection broken: [^']*")


class DownloadError(Exception):
    """An expected failure (HTTP status, network, checksum), reported as one line."""


class RetryableError(DownloadError):
    """A failure another attempt may cure: a 5xx answer, a cut transfer, a refused resume."""


RETRYABLE = (RetryableError, requests.ConnectionError, requests.Timeout,
             requests.exceptions.ChunkedEncodingError)


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


def download_model(model: str, *, models_dir: str = "models", base_url: str = DEFAULT_BASE_URL,
                   attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S) -> None:
    """Fetch the seven files of `model` into `models_dir/model`, skipping those already there.

    A final file name is trusted without asking the server: only `fetch_file`'s rename, after
    verification, ever creates one.
    """
    check_model_name(model)
    base_url = check_base_url(base_url)
    folder = os.path.join(models_dir, model)
    os.makedirs(folder, exist_ok=True)
    with requests.Session() as session:
        # Content-Length and Content-MD5 describe the stored bytes, not a compressed stream.
        session.headers["Accept-Encoding"] = "identity"
        for filename in FILES:
            path = os.path.join(folder, filename)
            if os.path.exists(path):
                print(f"{path}: already downloaded")
                continue
            fetch_file(session, f"{base_url}/models/{model}/{filename}", path,
                       attempts=attempts, backoff_s=backoff_s)


def fetch_file(session: requests.Session, url: str, path: str, *, attempts: int = ATTEMPTS,
               backoff_s: float = BACKOFF_S) -> None:
    """Download `url` to `path` through `path.part`, renaming it only when complete and verified."""
    part = path + ".part"
    try:
        _fetch_with_retries(session, url, part, attempts=attempts, backoff_s=backoff_s)
    except (DownloadError, requests.RequestException) as exc:
        raise DownloadError(f"GET {url}: {_describe(exc)}") from exc
    os.replace(part, path)


def _fetch_with_retries(session, url, part, *, attempts, backoff_s):
    """Call `_fetch_once` until it succeeds or `attempts` failures in a row added no bytes."""
    failures = 0
    while True:
        before = _size(part)
        try:
            return _fetch_once(session, url, part)
        except RETRYABLE as exc:
            # A flaky link may cut a 6 GB transfer many times: only failures that add nothing count.
            failures = 1 if _size(part) > before else failures + 1
            if failures >= attempts:
                raise RetryableError(f"{_describe(exc)} (gave up after {failures} attempts "
                                     "in a row)") from exc
            delay = backoff_s * 2 ** (failures - 1)
            tqdm.write(f"{os.path.basename(url)}: {_describe(exc)}; retrying in {delay:g} s",
                       file=sys.stderr)
            time.sleep(delay)


def _fetch_once(session, url, part):
    """One GET of `url` into `part`, continuing from the size `part` already has when allowed."""
    offset = _size(part)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
        start = _body_start(response, offset, part)
        size = _announced_size(response, start)
        digest = _receive(response, part, start, size)
    _verify(part, size, digest, _announced_md5(response))


def _body_start(response, offset, part):
    """Where in `part` the body of `response` begins; raise for any other answer than 200/206."""
    status = response.status_code
    if status == 200:
        return 0
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if status == 206 and match and int(match.group(1)) == offset:
        return offset
    reason = f"HTTP {status} {response.reason or ''}".strip()
    if status in (206, 416):  # the partial file does not fit what the server holds now
        if os.path.exists(part):
            os.remove(part)
        raise RetryableError(f"{reason}: cannot resume at byte {offset}, starting again")
    if status >= 500:
        raise RetryableError(reason)
    raise DownloadError(f"{reason} (check the model name, or point --base_url or GPT2_BASE_URL "
                        "at a mirror)")


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


def _receive(response, part, start, size):
    """Write the body into `part` from byte `start` with a progress bar; return the file's MD5."""
    digest = _md5_of(part) if start else hashlib.md5()
    name = os.path.basename(part)[:-len(".part")]
    with open(part, "ab" if start else "wb") as file, \
            tqdm(desc=name, total=size, initial=start, unit="B", unit_scale=True,
                 unit_divisor=1024) as bar:
        for chunk in response.iter_content(CHUNK_BYTES):
            file.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
        file.flush()
        os.fsync(file.fileno())  # the rename that follows must not outrun the data
    return digest


def _verify(part, size, digest, md5):
    """Raise unless `part` has the announced size and MD5; a wrong MD5 also deletes `part`."""
    actual = _size(part)
    if size is not None and actual < size:
        raise RetryableError(f"transfer cut at byte {actual} of {size}")
    received = base64.b64encode(digest.digest()).decode("ascii")
    if (size is not None and actual > size) or (md5 is not None and received != md5):
        os.remove(part)  # so that a re-run starts clean
        raise DownloadError(f"corrupt download: {actual} bytes with MD5 {received}, expected "
                            f"{size} bytes with MD5 {md5}; deleted it, run again")


def _md5_of(path):
    """MD5 of the bytes already in `path`, ready to be continued."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest


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


def _parser():
    """The command line: a model name and a documented flag for each option."""
    parser = argparse.ArgumentParser(
        description="Download a GPT-2 checkpoint into MODELS_DIR/MODEL; run it again to resume.",
        epilog="GPT2_DOWNLOAD_BACKOFF: seconds before the first retry (default 1, doubling).")
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
        check_base_url(args.base_url)
        backoff_s = _backoff_from_env()
    except ValueError as exc:
        return _fail(parser, str(exc), 2)
    try:
        download_model(args.model, models_dir=args.models_dir, base_url=args.base_url,
                       backoff_s=backoff_s)
    except KeyboardInterrupt:
        return _fail(parser, "interrupted; run the same command again to resume", 130)
    except DownloadError as exc:
        return _fail(parser, str(exc), 1)
    except OSError as exc:
        return _fail(parser, f"cannot write under {args.models_dir!r}: {exc}", 1)
    return 0


def _backoff_from_env():
    """The first retry delay from GPT2_DOWNLOAD_BACKOFF, else BACKOFF_S."""
    text = os.environ.get("GPT2_DOWNLOAD_BACKOFF", "")
    try:
        value = float(text) if text else BACKOFF_S
    except ValueError:
        value = -1.0
    if not 0 <= value < 3600:
        raise ValueError("GPT2_DOWNLOAD_BACKOFF must be seconds from 0 to 3600. "
                         f"Received: {text!r}")
    return value


def _fail(parser, message, status):
    """Print `message` as argparse does for errors, and return `status`."""
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
