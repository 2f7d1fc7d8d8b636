"""download_model.py against a real HTTP server on 127.0.0.1 that can misbehave on demand.

End-to-end cases run the CLI in a subprocess; finer cases call `fetch_file` directly.
"""
import base64
import email.utils
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

import download_model
from helpers import REPO, VOCAB_DIR, RecordingBar
SCRIPT = os.path.join(REPO, "download_model.py")
MODEL = "99M"  # no model OpenAI released: RELEASED knows nothing of it, so CONTENT can pass
BIG = "model.ckpt.data-00000-of-00001"
CONTENT = {name: f'{{"file": "{name}"}}\n'.encode() * 20 for name in download_model.FILES}
CONTENT[BIG] = random.Random(0).randbytes(8 * download_model.CHUNK_BYTES)  # 512 KiB
FORBIDDEN_XML = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>PublicAccessNotPermitted'
                 b'</Code><Message>Public access is not permitted on this storage account.'
                 b'</Message></Error>')
LOGIN_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><form "
              b"action=/login></form></body></html>\n")


def md5_b64(data):
    """Base64 of the MD5 digest, as Azure's Content-MD5 header carries it."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


class FakeStore(ThreadingHTTPServer):
    """Serves `content` under /gpt-2/models/MODEL/; `plans` scripts the next GETs' answers per file.

    Like Azure it answers HEAD and sends Content-MD5 unless told otherwise: `md5 = False` is a
    plain mirror, `head` picks how HEAD answers ("ok", "nolength" or "405").
    """

    daemon_threads = True  # a handler stuck writing to a killed client must not block shutdown

    def __init__(self):
        super().__init__(("127.0.0.1", 0), StoreHandler)
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}/gpt-2"
        self.model = MODEL  # served as /gpt-2/models/{model}/
        self.content = dict(CONTENT)  # file name -> the bytes served
        self.plans = {}  # file name -> behaviours for its next GETs, then `default`
        self.default = "ok"
        self.md5 = True
        self.head = "ok"
        self.retry_after = None  # Retry-After of "busy429" and "busy503" answers, or its maker
        self.range_md5_header = "Content-MD5"  # Azure uses x-ms-blob-content-md5 on a 206
        self.log = []  # (method, file name, Range header or None)
        self.times = []  # time.monotonic() of each request in `log`
        self.closing = threading.Event()
        self.release = threading.Event()  # lets a "held" answer finish
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):
        """Clients that hang up (killed, timed out) are part of the tests, not server errors."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def record(self, method, name, range_header):
        """Log a request."""
        with self.lock:
            self.log.append((method, name, range_header))
            self.times.append(time.monotonic())

    def next_behaviour(self, method, name, range_header):
        """Record a request and pick how to answer it."""
        self.record(method, name, range_header)
        with self.lock:
            plan = self.plans.get(name)
            return plan.pop(0) if plan else self.default

    def gets(self, name=None):
        """Range headers of the GETs received, for one file or for all."""
        return [r for m, n, r in self.log if m == "GET" and name in (None, n)]

    def heads(self):
        """Names of the files asked for with HEAD."""
        return [n for m, n, r in self.log if m == "HEAD"]


class StoreHandler(BaseHTTPRequestHandler):
    """GET with Range and Content-MD5, HEAD, plus scripted failures."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave together, not after a delayed ACK

    def log_message(self, *args):
        pass

    def file_name(self):
        prefix = f"/gpt-2/models/{self.server.model}/"
        return self.path[len(prefix):] if self.path.startswith(prefix) else None

    def do_HEAD(self):
        name = self.file_name()
        self.server.record("HEAD", name, None)
        data = self.server.content.get(name)
        if data is None or self.server.head == "405":
            return self.send_head(404 if data is None else 405, 0, {})
        headers = {"Content-MD5": md5_b64(data)} if self.server.md5 else {}
        if self.server.head == "nolength":
            return self.send_head(200, None, headers)
        self.send_head(200, len(data), headers)

    def do_GET(self):
        name = self.file_name()
        behaviour = self.server.next_behaviour(self.command, name, self.headers.get("Range"))
        if name not in self.server.content or behaviour == "notfound":
            return self.reply(404, b"<Error><Code>BlobNotFound</Code></Error>")
        if behaviour == "forbidden":
            return self.reply(403, FORBIDDEN_XML, {"Content-Type": "application/xml"})
        if behaviour == "error500":
            return self.reply(500, b"<Error><Code>InternalError</Code></Error>")
        if behaviour in ("busy429", "busy503"):
            value = self.server.retry_after
            wait = {"Retry-After": value() if callable(value) else value} if value else {}
            return self.reply(int(behaviour[-3:]), b"slow down", wait)
        if behaviour in ("html", "html_unlabelled"):  # a mirror's login page, with a 200
            kind = "text/html; charset=utf-8" if behaviour == "html" else "application/octet-stream"
            return self.reply(200, LOGIN_PAGE, {"Content-Type": kind})
        self.serve(self.server.content[name], behaviour)

    def serve(self, data, behaviour):
        """200 or 206 with the true Content-MD5, bending the body as `behaviour` says."""
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and behaviour != "norange" else 0
        if start >= len(data) > 0:
            return self.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        headers = {"Content-MD5": md5_b64(data)} if self.server.md5 else {}
        if start:
            headers = {self.server.range_md5_header: md5_b64(data)} if self.server.md5 else {}
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if behaviour == "corrupt":
            body = body[:-1] + bytes([body[-1] ^ 1])
        if behaviour.startswith("nolength"):  # the body ends where the connection does
            return self.serve_without_length(body, headers, cut=behaviour == "nolength_cut")
        if behaviour == "chunked_cut":
            return self.serve_chunked_cut(body, headers)
        self.send_head(206 if start else 200, len(body), headers)
        if behaviour in ("cut", "stall"):  # the full Content-Length was promised
            body = body[:len(body) // 2]
            self.close_connection = True
        if behaviour == "held":  # half, then the rest once the test sets `release`
            self.send_body(body[:len(body) // 2], delay_s=0)
            self.server.release.wait(20)
            return self.send_body(body[len(body) // 2:], delay_s=0)
        if behaviour == "trickle":  # half at once, then a few bytes at a time, never silent long
            self.send_body(body[:len(body) // 2], delay_s=0)
            return self.send_body(body[len(body) // 2:], delay_s=0.02, piece=16)
        self.send_body(body, delay_s=0.01 if behaviour == "slow" else 0)
        if behaviour == "stall":  # silent until the client times out
            self.server.closing.wait(5)

    def serve_without_length(self, body, headers, cut):
        """No Content-Length, no chunks: the client sees the end when the connection closes."""
        self.send_head(206 if "Content-Range" in headers else 200, None, headers)
        self.close_connection = True
        self.send_body(body[:len(body) // 2] if cut else body, delay_s=0)

    def serve_chunked_cut(self, body, headers):
        """Half the body in chunks, then the connection closes without the last, empty chunk."""
        self.send_head(206 if "Content-Range" in headers else 200, None,
                       {**headers, "Transfer-Encoding": "chunked"})
        self.close_connection = True
        half = body[:len(body) // 2]
        for i in range(0, len(half), 4096):
            piece = half[i:i + 4096]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))

    def send_body(self, body, delay_s, piece=4096):
        for i in range(0, len(body), piece):
            if self.server.closing.is_set():
                break
            try:
                self.wfile.write(body[i:i + piece])
            except OSError:  # the client was killed, or gave up
                self.close_connection = True
                return
            time.sleep(delay_s)

    def send_head(self, status, length, headers):
        """Status and headers; `length` None sends no Content-Length."""
        self.send_response(status)
        length = {} if length is None else {"Content-Length": str(length)}
        for key, value in {**length, **headers}.items():
            self.send_header(key, value)
        self.end_headers()

    def reply(self, status, body, headers=None):
        self.send_head(status, len(body), headers or {})
        self.wfile.write(body)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Keep requests from sending 127.0.0.1 through a proxy configured in the environment."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def store():
    """A running FakeStore, always shut down."""
    server = FakeStore()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def cli_args(tmp_path, base_url, *extra):
    """Command line for the script, with models under tmp_path/models."""
    return [sys.executable, SCRIPT, *extra, "--models_dir", str(tmp_path / "models"),
            "--base_url", base_url]


def cli_env(**extra):
    """The environment for the script: short retry delays, no GPT2_BASE_URL unless given, and no
    load check (CONTENT is no model; the tests that load one say so)."""
    env = {k: v for k, v in os.environ.items() if k != "GPT2_BASE_URL"}
    return {**env, "GPT2_DOWNLOAD_BACKOFF": "0.01", "GPT2_DOWNLOAD_CHECK": "0", **extra}


def run_cli(tmp_path, base_url, *extra, env=None, timeout=30):
    """Run the script in a subprocess with cwd tmp_path; return the CompletedProcess."""
    return subprocess.run(cli_args(tmp_path, base_url, *extra) if base_url else
                          [sys.executable, SCRIPT, *extra], cwd=tmp_path, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def model_dir(tmp_path):
    return tmp_path / "models" / MODEL


def record_path(tmp_path):
    """Where download_model.py records what it verified."""
    return tmp_path / "models" / f".{MODEL}.download.json"


def repair(tmp_path, store):
    """The command that error messages tell to run again, for `cli_args`."""
    return shlex.join(["python3", "download_model.py", MODEL, "--models_dir",
                       str(tmp_path / "models"), "--base_url", store.base_url])


def assert_all_correct(tmp_path, content=CONTENT):
    """Every final file holds exactly the served bytes and no .part is left."""
    folder = model_dir(tmp_path)
    assert sorted(os.listdir(folder)) == sorted(download_model.FILES)
    for name, data in content.items():
        assert (folder / name).read_bytes() == data, name


def final_files(root):
    """Names of all regular files under `root`."""
    return [f for _, _, files in os.walk(root) for f in files]


def assert_one_error_line(proc, *needles, status=1):
    """Exit status, no traceback, and exactly one 'error:' line holding every needle."""
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0]


def wait_for_part(path, min_bytes, proc, timeout_s=15):
    """Wait until `path` holds at least `min_bytes`, while `proc` is still running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.stat().st_size >= min_bytes:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never reached {min_bytes} bytes")


# End to end: the CLI in a subprocess.

def test_downloads_all_files(store, tmp_path):
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert proc.returncode == 0, proc.stderr
    assert_all_correct(tmp_path)
    assert sorted(n for m, n, r in store.log if r is None) == sorted(download_model.FILES)


def test_rerun_after_success_makes_no_requests(store, tmp_path):
    assert run_cli(tmp_path, store.base_url, MODEL).returncode == 0
    store.log.clear()
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert proc.returncode == 0, proc.stderr
    assert store.log == []
    assert_all_correct(tmp_path)


def test_base_url_from_environment(store, tmp_path):
    proc = run_cli(tmp_path, None, MODEL, "--models_dir", str(tmp_path / "models"),
                   env=cli_env(GPT2_BASE_URL=store.base_url + "/"))
    assert proc.returncode == 0, proc.stderr
    assert_all_correct(tmp_path)


def test_cut_transfer_is_resumed(store, tmp_path):
    store.plans[BIG] = ["cut"]
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert proc.returncode == 0, proc.stderr
    assert_all_correct(tmp_path)
    first, second = store.gets(BIG)
    assert first is None and re.fullmatch(r"bytes=[1-9]\d*-", second)


def test_server_ignoring_range_restarts_from_zero(store, tmp_path):
    store.plans[BIG] = ["cut", "norange"]
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert proc.returncode == 0, proc.stderr
    assert_all_correct(tmp_path)
    assert store.gets(BIG)[1] is not None  # it asked for a range and got the whole file


def test_500_is_retried(store, tmp_path):
    store.plans["encoder.json"] = ["error500", "error500"]
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert proc.returncode == 0, proc.stderr
    assert_all_correct(tmp_path)
    assert len(store.gets("encoder.json")) == 3


def test_500_forever_gives_up(store, tmp_path):
    store.default = "error500"
    proc = run_cli(tmp_path, store.base_url, MODEL)
    url = f"{store.base_url}/models/{MODEL}/checkpoint"
    assert_one_error_line(proc, url, "500")
    assert len(store.gets()) == download_model.ATTEMPTS
    assert final_files(tmp_path / "models") == []
    assert not (tmp_path / "models").exists()  # nor an empty folder


def test_403_xml_is_one_line_and_saves_nothing(store, tmp_path):
    store.default = "forbidden"
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert_one_error_line(proc, f"{store.base_url}/models/{MODEL}/checkpoint", "403")
    assert "<Error>" not in proc.stderr + proc.stdout
    assert len(store.gets()) == 1  # 4xx is not retried
    assert final_files(tmp_path / "models") == []
    assert not (tmp_path / "models").exists()


def test_404_for_unknown_model(store, tmp_path):
    proc = run_cli(tmp_path, store.base_url, "999M")
    assert_one_error_line(proc, f"{store.base_url}/models/999M/checkpoint", "404")
    assert final_files(tmp_path / "models") == []
    assert not (tmp_path / "models").exists()


def test_corrupt_body_is_rejected_and_deleted(store, tmp_path):
    store.plans[BIG] = ["corrupt"]
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert_one_error_line(proc, BIG, "MD5", f"run `{repair(tmp_path, store)}` again")
    assert not (model_dir(tmp_path) / BIG).exists()
    assert not (model_dir(tmp_path) / f"{BIG}.part").exists()
    assert run_cli(tmp_path, store.base_url, MODEL).returncode == 0  # the rerun starts clean
    assert_all_correct(tmp_path)


def test_connection_refused_is_one_line(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_cli(tmp_path, f"http://127.0.0.1:{port}", MODEL)
    assert_one_error_line(proc, f"http://127.0.0.1:{port}/models/{MODEL}/checkpoint")
    assert final_files(tmp_path / "models") == []
    assert not (tmp_path / "models").exists()


def start_slow_download(store, tmp_path):
    """Start the CLI on a slowly served BIG file; return it once BIG.part has a chunk."""
    store.plans[BIG] = ["slow"]
    proc = subprocess.Popen(cli_args(tmp_path, store.base_url, MODEL), cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_part(model_dir(tmp_path) / f"{BIG}.part", download_model.CHUNK_BYTES, proc)
    return proc


def test_killed_run_leaves_no_torn_file_and_rerun_resumes(store, tmp_path):
    proc = start_slow_download(store, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    part = model_dir(tmp_path) / f"{BIG}.part"
    assert not (model_dir(tmp_path) / BIG).exists()
    kept = part.stat().st_size
    assert 0 < kept < len(CONTENT[BIG])
    store.log.clear()
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert proc.returncode == 0, proc.stderr
    assert_all_correct(tmp_path)
    assert store.gets(BIG) == [f"bytes={kept}-"]
    assert store.gets("checkpoint") == []  # complete files are not fetched again


def test_ctrl_c_exits_130_with_one_line(store, tmp_path):
    proc = start_slow_download(store, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    assert_one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr),
                          "interrupted", f"run `{repair(tmp_path, store)}` to resume", status=130)
    assert not (model_dir(tmp_path) / BIG).exists()
    assert (model_dir(tmp_path) / f"{BIG}.part").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "", "..", ".hidden", "a..b", "a\\b"])
def test_bad_model_names_are_rejected(tmp_path, name):
    proc = run_cli(tmp_path, "http://127.0.0.1:9", name)
    assert_one_error_line(proc, "invalid model name", status=2)
    assert len(proc.stderr.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_models_dir_that_is_a_file_is_one_line(store, tmp_path):
    (tmp_path / "models").write_text("not a folder")
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert_one_error_line(proc, "cannot write")


def test_help_lists_the_models(tmp_path):
    proc = run_cli(tmp_path, None, "--help")
    assert proc.returncode == 0
    for name in download_model.MODELS + ("--models_dir", "--base_url", "GPT2_BASE_URL"):
        assert name in proc.stdout


# Re-runs: a file that is not what the server has is replaced; verified files cost no request.
# These call download_model() in this process: the CLI around it is tested above.

def download(store, tmp_path, model=MODEL, check=False, **limits):
    """download_model() into tmp_path/models, without delays before retries."""
    download_model.download_model(model, models_dir=str(tmp_path / "models"),
                                  base_url=store.base_url, check=check,
                                  limits=download_model.Limits(backoff_s=0, **limits))


def download_and_forget_the_log(store, tmp_path):
    """A complete download, after which the store's log is empty."""
    download(store, tmp_path)
    store.log.clear()


@pytest.mark.parametrize("change", ["truncated", "same size, other bytes"])
def test_changed_file_is_replaced_on_rerun(store, tmp_path, capsys, change):
    download_and_forget_the_log(store, tmp_path)
    path = model_dir(tmp_path) / "vocab.bpe"
    data = bytearray(CONTENT["vocab.bpe"])
    data[10] ^= 1
    path.write_bytes(data[:100] if change == "truncated" else bytes(data))
    capsys.readouterr()
    download(store, tmp_path)
    assert_all_correct(tmp_path)
    assert store.log == [("GET", "vocab.bpe", None)]
    assert "vocab.bpe: " in capsys.readouterr().err  # it says why it fetches the file again


def test_touched_but_unchanged_file_is_kept_without_requests(store, tmp_path):
    download_and_forget_the_log(store, tmp_path)
    path = model_dir(tmp_path) / BIG
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    download(store, tmp_path)
    assert store.log == []
    assert_all_correct(tmp_path)


@pytest.mark.parametrize("record", ["deleted", "unreadable"])
def test_files_without_a_record_are_checked_against_the_server(store, tmp_path, record):
    """As after a download by an older download_model.py: HEAD gives the size and MD5."""
    download_and_forget_the_log(store, tmp_path)
    if record == "deleted":
        record_path(tmp_path).unlink()
    else:
        record_path(tmp_path).write_text('{"files": [')
    folder = model_dir(tmp_path)
    (folder / "encoder.json").write_bytes(CONTENT["encoder.json"][:-1])  # short
    corrupt = bytearray(CONTENT[BIG])
    corrupt[-1] ^= 1
    (folder / BIG).write_bytes(bytes(corrupt))  # same size, wrong MD5
    download(store, tmp_path)
    assert_all_correct(tmp_path)
    assert sorted(store.heads()) == sorted(download_model.FILES)
    assert sorted(n for m, n, r in store.log if m == "GET") == sorted(["encoder.json", BIG])
    store.log.clear()
    download(store, tmp_path)
    assert store.log == []  # recorded again


def test_files_without_a_record_are_fetched_again_when_the_server_gives_no_size(store, tmp_path):
    download_and_forget_the_log(store, tmp_path)
    record_path(tmp_path).unlink()
    store.head, store.md5 = "nolength", False
    download(store, tmp_path)
    assert_all_correct(tmp_path)
    assert sorted(n for m, n, r in store.log if m == "GET") == sorted(download_model.FILES)


# What a mirror may answer.

@pytest.mark.parametrize("behaviour", ["html", "html_unlabelled"])
def test_html_page_is_refused(store, tmp_path, behaviour):
    store.md5 = False
    store.plans["hparams.json"] = [behaviour]
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert_one_error_line(proc, f"{store.base_url}/models/{MODEL}/hparams.json", "HTML page")
    assert "<html>" not in proc.stderr + proc.stdout
    assert not (model_dir(tmp_path) / "hparams.json").exists()
    assert not (model_dir(tmp_path) / "hparams.json.part").exists()
    assert len(store.gets("hparams.json")) == 1


def test_body_without_length_that_is_cut_is_resumed(store, tmp_path):
    store.md5 = False
    store.plans[BIG] = ["nolength_cut"]
    download(store, tmp_path)
    assert_all_correct(tmp_path)
    assert store.gets(BIG) == [None, f"bytes={len(CONTENT[BIG]) // 2}-"]
    assert store.heads() == [BIG]  # asked for the size the GET did not give


def test_chunked_body_that_is_cut_is_resumed(store, tmp_path):
    store.md5 = False
    store.plans[BIG] = ["chunked_cut"]
    download(store, tmp_path)
    assert_all_correct(tmp_path)
    first, second = store.gets(BIG)
    assert first is None and re.fullmatch(r"bytes=[1-9]\d*-", second)


def http_date_in(seconds):
    """A Retry-After HTTP date `seconds` from now (whole seconds, as HTTP dates have)."""
    return lambda: email.utils.formatdate(time.time() + seconds, usegmt=True)


class Clock:
    """Stands in for download_model's `time`: remembers the sleeps it is asked for instead."""

    def __init__(self):
        self.slept = []

    def sleep(self, seconds):
        self.slept.append(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.mark.parametrize("behaviour, retry_after, low, high", [
    ("busy429", "1", 1, 1), ("busy503", http_date_in(30), 28, 30)])
def test_429_and_503_wait_as_retry_after_says(store, tmp_path, monkeypatch, behaviour,
                                              retry_after, low, high):
    clock = Clock()
    monkeypatch.setattr(download_model, "time", clock)
    store.plans["encoder.json"] = [behaviour]
    store.retry_after = retry_after
    download(store, tmp_path)  # whose own backoff is 0 s
    assert_all_correct(tmp_path)
    assert len(store.gets("encoder.json")) == 2
    (wait,) = clock.slept
    assert low <= wait <= high


def test_retry_after_beyond_the_cap_ends_the_run(store, tmp_path):
    store.default = "busy503"
    store.retry_after = "100000"
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert_one_error_line(proc, "503", "100000 s", f"run `{repair(tmp_path, store)}` again")
    assert len(store.gets()) == 1


def test_trickling_server_is_given_up(store, tmp_path):
    store.plans[BIG] = ["trickle"] * 10  # each attempt brings bytes, and still counts
    proc = run_cli(tmp_path, store.base_url, MODEL, env=cli_env(GPT2_DOWNLOAD_STALL="0.2"))
    assert_one_error_line(proc, f"{store.base_url}/models/{MODEL}/{BIG}", "stalled",
                          f"gave up after {download_model.ATTEMPTS}", repair(tmp_path, store))
    assert len(store.gets(BIG)) == download_model.ATTEMPTS
    assert not (model_dir(tmp_path) / BIG).exists()


@pytest.mark.parametrize("name, value", [("GPT2_DOWNLOAD_STALL", "0"),
                                         ("GPT2_DOWNLOAD_BACKOFF", "-1"),
                                         ("GPT2_DOWNLOAD_CHECK", "yes")])
def test_bad_settings_in_the_environment_are_one_line(tmp_path, name, value):
    proc = run_cli(tmp_path, "http://127.0.0.1:9", MODEL, env=cli_env(**{name: value}))
    assert_one_error_line(proc, name, repr(value), status=2)
    assert os.listdir(tmp_path) == []


# Two runs, a 404 and the folders.

def start_held_download(store, tmp_path):
    """Start the CLI; return it once BIG.part has a chunk (the server holds back BIG's second
    half until `store.release` is set)."""
    store.plans[BIG] = ["held"]
    proc = subprocess.Popen(cli_args(tmp_path, store.base_url, MODEL), cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_part(model_dir(tmp_path) / f"{BIG}.part", download_model.CHUNK_BYTES, proc)
    return proc


def start_waiting_run(store, tmp_path):
    """Start a second CLI run of the model; return it once it says it waits for the first."""
    proc = subprocess.Popen(cli_args(tmp_path, store.base_url, MODEL), cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stderr.readline()
    assert "waiting for another download_model.py" in line, line + proc.stderr.read()
    return proc


def test_two_runs_of_a_model_take_turns(store, tmp_path):
    first = start_held_download(store, tmp_path)
    second = start_waiting_run(store, tmp_path)
    store.release.set()
    _, first_err = first.communicate(timeout=20)
    _, second_err = second.communicate(timeout=20)
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert "corrupt" not in first_err + second_err
    assert_all_correct(tmp_path)
    assert store.gets(BIG) == [None]  # the second run found the file verified
    assert sorted(os.listdir(tmp_path / "models")) == [f".{MODEL}.download.json", MODEL]


def test_ctrl_c_while_waiting_exits_130(store, tmp_path):
    first = start_held_download(store, tmp_path)
    second = start_waiting_run(store, tmp_path)
    second.send_signal(signal.SIGINT)
    _, stderr = second.communicate(timeout=10)
    assert_one_error_line(subprocess.CompletedProcess(second.args, second.returncode, "", stderr),
                          "interrupted", status=130)
    store.release.set()
    _, first_err = first.communicate(timeout=20)
    assert first.returncode == 0, first_err
    assert_all_correct(tmp_path)


def test_script_without_src_downloads_and_says_it_did_not_load_the_model(store, tmp_path):
    """As in the Docker build, which copies download_model.py before src/."""
    shutil.copy(SCRIPT, tmp_path / "download_model.py")
    proc = subprocess.run([sys.executable, "download_model.py", MODEL, "--base_url",
                           store.base_url], cwd=tmp_path, env=cli_env(GPT2_DOWNLOAD_CHECK="1"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert f"note: {MODEL} was not test-loaded (no {tmp_path / 'src' / 'model.py'})" in proc.stderr
    assert_all_correct(tmp_path)
    assert json.loads(record_path(tmp_path).read_text())["loads"] is False  # a later run checks


def test_404_leaves_a_models_dir_as_it_was(store, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "README.md").write_text("models go here\n")
    proc = run_cli(tmp_path, store.base_url, "999M")
    assert_one_error_line(proc, "404")
    assert os.listdir(tmp_path / "models") == ["README.md"]


def test_404_deletes_the_part_of_a_file_the_server_no_longer_has(store, tmp_path):
    model_dir(tmp_path).mkdir(parents=True)
    part = model_dir(tmp_path) / f"{BIG}.part"
    part.write_bytes(CONTENT[BIG][:1000])
    store.plans[BIG] = ["notfound"]
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert_one_error_line(proc, f"{store.base_url}/models/{MODEL}/{BIG}", "404")
    assert not part.exists()
    assert store.gets(BIG) == ["bytes=1000-"]


# Finer cases: fetch_file called directly.

@pytest.fixture
def bars(monkeypatch):
    monkeypatch.setattr(RecordingBar, "bars", [])
    monkeypatch.setattr(download_model, "tqdm", RecordingBar)
    return RecordingBar.bars


def fetch(store, tmp_path, name=BIG, attempts=download_model.ATTEMPTS):
    """fetch_file of one file into tmp_path; return the final path."""
    path = tmp_path / name
    with requests.Session() as session:
        download_model.fetch_file(session, f"{store.base_url}/models/{MODEL}/{name}", str(path),
                                  limits=download_model.Limits(attempts=attempts, backoff_s=0))
    return path


def test_bar_total_and_initial_count_bytes(store, tmp_path, bars):
    fetch(store, tmp_path)
    (bar,) = bars
    assert bar.kwargs["total"] == len(CONTENT[BIG]) and bar.kwargs["initial"] == 0
    assert sum(bar.updates) == len(CONTENT[BIG])


@pytest.mark.parametrize("md5_header", ["Content-MD5", "x-ms-blob-content-md5"])
def test_resume_hashes_the_whole_file(store, tmp_path, bars, md5_header):
    store.range_md5_header = md5_header
    kept = 100_000
    (tmp_path / f"{BIG}.part").write_bytes(CONTENT[BIG][:kept])
    path = fetch(store, tmp_path)
    assert path.read_bytes() == CONTENT[BIG]
    assert store.gets() == [f"bytes={kept}-"]
    (bar,) = bars
    assert (bar.kwargs["total"], bar.kwargs["initial"]) == (len(CONTENT[BIG]), kept)
    assert sum(bar.updates) == len(CONTENT[BIG]) - kept


def test_wrong_partial_bytes_fail_the_md5_and_are_deleted(store, tmp_path, bars):
    part = tmp_path / f"{BIG}.part"
    part.write_bytes(b"\0" * 100_000)
    with pytest.raises(download_model.DownloadError, match="MD5"):
        fetch(store, tmp_path)
    assert not part.exists() and not (tmp_path / BIG).exists()
    assert fetch(store, tmp_path).read_bytes() == CONTENT[BIG]


def test_complete_part_is_restarted_after_416(store, tmp_path, bars):
    (tmp_path / f"{BIG}.part").write_bytes(CONTENT[BIG])
    assert fetch(store, tmp_path).read_bytes() == CONTENT[BIG]
    assert store.gets() == [f"bytes={len(CONTENT[BIG])}-", None]


def test_cuts_that_make_progress_do_not_use_up_attempts(store, tmp_path, bars):
    store.plans[BIG] = ["cut", "cut", "cut"]  # 256 KiB, 128 KiB, 64 KiB, then the rest
    assert fetch(store, tmp_path, attempts=2).read_bytes() == CONTENT[BIG]
    assert len(store.gets()) == 4


def test_read_timeout_is_retried(store, tmp_path, bars, monkeypatch):
    monkeypatch.setattr(download_model, "TIMEOUT_S", (5, 0.2))
    store.plans[BIG] = ["stall"]
    assert fetch(store, tmp_path).read_bytes() == CONTENT[BIG]
    assert store.gets() == [None, f"bytes={len(CONTENT[BIG]) // 2}-"]


def test_gives_up_after_attempts_in_a_row(store, tmp_path, bars):
    store.default = "error500"
    with pytest.raises(download_model.DownloadError, match=r"HTTP 500 .*gave up after 3"):
        fetch(store, tmp_path, name="checkpoint", attempts=3)
    assert len(store.gets()) == 3
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["124M", "1558M", "my-model_v2.1"])
def test_good_model_names(name):
    assert download_model.check_model_name(name) == name


@pytest.mark.parametrize("value, low, high", [("120", 120, 120), ("0", 0, 0),
                                              (http_date_in(30), 28, 30),
                                              ("Wed, 21 Oct 2015 07:28:00 GMT", 0, 0),
                                              ("soon", None, None), ("", None, None)])
def test_retry_after_is_read_as_seconds_or_a_date(value, low, high):
    response = requests.Response()
    response.headers["Retry-After"] = value() if callable(value) else value
    wait = download_model._retry_after(response)
    assert wait is None if low is None else low <= wait <= high


def test_stall_is_retried_from_where_it_stopped(store, tmp_path, bars):
    store.plans[BIG] = ["trickle"]
    path = tmp_path / BIG
    with requests.Session() as session:
        download_model.fetch_file(session, f"{store.base_url}/models/{MODEL}/{BIG}", str(path),
                                  limits=download_model.Limits(backoff_s=0, stall_s=0.2))
    assert path.read_bytes() == CONTENT[BIG]
    first, second = store.gets()
    kept = int(re.fullmatch(r"bytes=(\d+)-", second).group(1))
    assert first is None and kept >= len(CONTENT[BIG]) // 2


def test_429_without_retry_after_backs_off_and_gives_up(store, tmp_path, bars):
    store.default = "busy429"
    with pytest.raises(download_model.DownloadError, match=r"HTTP 429 .*gave up after 3"):
        fetch(store, tmp_path, name="checkpoint", attempts=3)
    assert len(store.gets()) == 3


def test_html_answer_leaves_a_part_as_it_was(store, tmp_path, bars):
    part = tmp_path / f"{BIG}.part"
    part.write_bytes(CONTENT[BIG][:100_000])
    store.plans[BIG] = ["html_unlabelled"]  # a 200 for a Range request: a whole new body
    with pytest.raises(download_model.DownloadError, match="HTML page"):
        fetch(store, tmp_path)
    assert part.read_bytes() == CONTENT[BIG][:100_000]


def test_a_run_that_waited_locks_the_lock_file_now_named(tmp_path):
    """The holder deletes the lock file as it leaves; the waiting run must not keep a lock on
    the deleted file, or a third run would lock a new one and write beside it."""
    fcntl = pytest.importorskip("fcntl")
    acquired, done = threading.Event(), threading.Event()

    def second_run():
        with download_model._taking_turns(str(tmp_path), MODEL):
            acquired.set()
            done.wait(10)

    thread = threading.Thread(target=second_run)
    with download_model._taking_turns(str(tmp_path), MODEL):
        thread.start()
        assert not acquired.wait(0.2)
    assert acquired.wait(10)
    descriptor = os.open(tmp_path / f".{MODEL}.download.lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(descriptor)
        done.set()
        thread.join()
    assert os.listdir(tmp_path) == []


# What OpenAI released: RELEASED's sizes and SHA-256s hold whatever a mirror says.

def test_released_vocabulary_is_the_repository_copy():
    """tests/gpt2-vocab is OpenAI's (test_setup.py); every model's RELEASED values are its."""
    assert set(download_model.RELEASED) == set(download_model.MODELS)
    for model in download_model.MODELS:
        for name in ("encoder.json", "vocab.bpe"):
            data = open(os.path.join(VOCAB_DIR, name), "rb").read()
            assert download_model.released(model, name) == download_model.Released(
                len(data), hashlib.sha256(data).hexdigest()), (model, name)
    assert download_model.released("99M", "vocab.bpe") == download_model.Released()


def test_released_weights_are_four_bytes_a_parameter():
    """A checkpoint's data file is its float32 variables back to back: OpenAI's published sizes
    of 124M and 355M are, and RELEASED's sizes for 774M and 1558M are derived so."""
    import checkpoints
    import model
    for name, shape in checkpoints.OFFICIAL.items():
        shapes = model.checkpoint_shapes(model.HParams(**shape))
        parameters = sum(math.prod(dims) for dims in shapes.values())
        assert download_model.released(name, BIG).size == 4 * parameters, name


OPENAI_TEXT = {  # what OpenAI wrote as these files, for a shape: 124M's SHA-256s are of this text
    "checkpoint": lambda shape: b'model_checkpoint_path: "model.ckpt"\n'
                                b'all_model_checkpoint_paths: "model.ckpt"\n',
    "hparams.json": lambda shape: (json.dumps(shape, indent=2) + "\n").encode(),
}


@pytest.mark.parametrize("name", OPENAI_TEXT)
def test_released_text_files_are_openais_text(name):
    """The published sizes and SHA-256s of 124M, 355M and 1558M are the text's, and 774M's are
    derived so."""
    import checkpoints
    text = {model: OPENAI_TEXT[name](shape) for model, shape in checkpoints.OFFICIAL.items()}
    assert {model: download_model.released(model, name) for model in text} == {
        model: download_model.Released(len(data), hashlib.sha256(data).hexdigest())
        for model, data in text.items()}


def test_released_meta_graphs_grow_by_the_same_bytes_a_layer():
    """The rule RELEASED's model.ckpt.meta size of 774M follows: the published sizes of 124M and
    355M differ by 37,947 bytes a layer, and 1558M's, 24 layers on, by as many again."""
    import checkpoints
    sizes = {model: download_model.released(model, "model.ckpt.meta").size for model in checkpoints.OFFICIAL}
    layers = {model: shape["n_layer"] for model, shape in checkpoints.OFFICIAL.items()}
    assert sizes == {model: sizes["124M"] + 37947 * (layers[model] - layers["124M"]) for model in sizes}


@pytest.mark.parametrize("name", ["124M", "355M"])
def test_released_index_is_what_tf1s_saver_writes_for_the_names_and_shapes(name, tmp_path):
    """The rule RELEASED's index sizes of 774M and 1558M follow (writing those takes 9 GB):
    TF1's Saver wrote the variables in sorted order, and the index it writes for OpenAI's names
    and shapes has the size OpenAI published (in any other order the offsets differ: 5,286 bytes
    for 124M)."""
    import checkpoints
    import model
    import saving
    import tensorflow as tf
    shapes = model.checkpoint_shapes(model.HParams(**checkpoints.OFFICIAL[name]))
    saving.write_tensors(str(tmp_path / "model.ckpt"), {key: tf.zeros(shapes[key]) for key in sorted(shapes)})
    assert download_model.released(name, "model.ckpt.index").size == (tmp_path / "model.ckpt.index").stat().st_size


@pytest.fixture
def released(monkeypatch):
    """RELEASED as if OpenAI had released CONTENT as MODEL."""
    monkeypatch.setitem(download_model.RELEASED, MODEL, {
        name: download_model.Released(len(data), hashlib.sha256(data).hexdigest())
        for name, data in CONTENT.items()})


def test_cut_body_without_any_size_is_refused_and_a_rerun_resumes(store, tmp_path, released):
    store.md5, store.head = False, "nolength"  # a plain mirror that never says how big a file is
    store.plans[BIG] = ["nolength_cut"]
    with pytest.raises(download_model.DownloadError) as error:
        download(store, tmp_path)
    half = len(CONTENT[BIG]) // 2
    assert str(error.value) == (
        f"GET {store.base_url}/models/{MODEL}/{BIG}: the body ended at byte {half} of "
        f"{len(CONTENT[BIG])} without the server giving a size: the transfer was cut, or the "
        f"mirror's copy is short; run `{repair(tmp_path, store)}` again")
    assert not (model_dir(tmp_path) / BIG).exists()
    download(store, tmp_path)
    assert_all_correct(tmp_path)
    assert store.gets(BIG)[-1] == f"bytes={half}-"


def test_short_copy_without_any_size_is_refused_again_on_a_rerun(store, tmp_path, released):
    store.md5, store.head, store.default = False, "nolength", "nolength"
    store.content[BIG] = CONTENT[BIG][:1000]
    for _ in range(2):  # the rerun resumes, hears the copy ends there, and starts again: short
        with pytest.raises(download_model.DownloadError, match="the body ended at byte 1000 of "):
            download(store, tmp_path)
        assert not (model_dir(tmp_path) / BIG).exists()


def test_another_size_is_refused_before_its_body(store, tmp_path, released):
    store.content[BIG] = CONTENT[BIG] + b"more"
    with pytest.raises(download_model.DownloadError, match=(
            f"^GET .*/{BIG}: the server's file has {len(CONTENT[BIG]) + 4} bytes, OpenAI's has "
            f"{len(CONTENT[BIG])}: it is not the released file \\(check --base_url")):
        download(store, tmp_path)
    assert BIG not in final_files(tmp_path) and f"{BIG}.part" not in final_files(tmp_path)


def test_other_bytes_of_the_same_size_fail_the_sha256(store, tmp_path, released):
    store.md5 = False
    store.content[BIG] = flipped(CONTENT[BIG], 1000)
    with pytest.raises(download_model.DownloadError, match=(
            f"corrupt download: SHA-256 {hashlib.sha256(store.content[BIG]).hexdigest()}, OpenAI's "
            f"file has {hashlib.sha256(CONTENT[BIG]).hexdigest()}; deleted it \\(a mirror's other file\\? check "
            "--base_url or GPT2_BASE_URL\\); run `")):
        download(store, tmp_path)
    assert BIG not in final_files(tmp_path) and f"{BIG}.part" not in final_files(tmp_path)


def test_files_already_there_are_held_to_openais_without_asking(store, tmp_path, released):
    model_dir(tmp_path).mkdir(parents=True)
    for name, data in CONTENT.items():  # unrecorded, as copied from elsewhere
        (model_dir(tmp_path) / name).write_bytes(flipped(data, 5) if name == BIG else data)
    download(store, tmp_path)
    assert_all_correct(tmp_path)
    assert store.heads() == [] and store.gets() == [None]  # only the bad one fetched again


def test_a_mirror_serving_something_else_as_124m_is_refused(store, tmp_path):
    store.model = "124M"
    with pytest.raises(download_model.DownloadError, match=(
            f"checkpoint: the server's file has {len(CONTENT['checkpoint'])} bytes, OpenAI's "
            "has 77")):
        download(store, tmp_path, model="124M")
    assert final_files(tmp_path) == []


# The load check, on a real checkpoint: tiny, and written once for the module.

SMALL = dict(n_vocab=259, n_ctx=8, n_embd=8, n_head=2, n_layer=1)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """The seven files of a GPT-2 in OpenAI's format, tiny: 259 tokens (the 256 bytes, two merges
    and <|endoftext|>), one layer of width 8."""
    import checkpoints
    import encoder
    folder = tmp_path_factory.mktemp("small")
    checkpoints.write_checkpoint(str(folder), SMALL)
    tokens = [*encoder.bytes_to_unicode().values(), "Ġt", "he", "<|endoftext|>"]
    (folder / "encoder.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "vocab.bpe").write_text("#version: 0.2\nĠ t\nh e\n", encoding="utf-8")
    return {name: (folder / name).read_bytes() for name in download_model.FILES}


def test_model_that_loads_is_recorded_and_not_checked_again(store, tmp_path, small_model, capsys,
                                                            monkeypatch):
    store.content = small_model
    download(store, tmp_path, check=True)
    assert_all_correct(tmp_path, small_model)
    assert f"{model_dir(tmp_path)}: the model loads" in capsys.readouterr().out
    assert json.loads(record_path(tmp_path).read_text())["loads"] is True
    store.log.clear()
    monkeypatch.setattr(download_model, "check_model", None)  # calling it would fail
    download(store, tmp_path, check=True)
    assert store.log == []


def flipped(data, at):
    """`data` with one bit changed at byte `at`."""
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


BAD_FILES = {  # what a mirror without checksums serves -> the files the check deletes
    "checkpoint names another model": (
        "checkpoint", lambda data: b'model_checkpoint_path: "/elsewhere/model.ckpt"\n',
        ["checkpoint"]),
    "hparams of another shape": (
        "hparams.json", lambda data: json.dumps({**SMALL, "n_layer": 2}).encode(),
        ["hparams.json", "model.ckpt.index"]),
    "index garbage": ("model.ckpt.index", lambda data: b"x" * len(data), ["model.ckpt.index"]),
    "data flipped": (BIG, lambda data: flipped(data, len(data) // 2), [BIG]),
    "meta cut": ("model.ckpt.meta", lambda data: data[:len(data) // 2], ["model.ckpt.meta"]),
    "encoder not token ids": ("encoder.json", lambda data: b'["Service Unavailable"]',
                              ["encoder.json", "vocab.bpe"]),
    "vocab cut at a line end": ("vocab.bpe", lambda data: data[:data.rindex(b"\n", 0, -1) + 1],
                                ["vocab.bpe"]),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_file_that_does_not_load_is_deleted_and_a_rerun_repairs(store, tmp_path, small_model,
                                                                case):
    name, bend, blamed = BAD_FILES[case]
    store.content = {**small_model, name: bend(small_model[name])}
    store.md5 = False
    with pytest.raises(download_model.DownloadError) as error:
        download(store, tmp_path, check=True)
    message = str(error.value)
    assert f"does not load, deleted {', '.join(blamed)}: " in message
    assert message.endswith(f"; run `{repair(tmp_path, store)}` again")
    kept = sorted(set(download_model.FILES) - set(blamed))
    assert sorted(os.listdir(model_dir(tmp_path))) == kept
    store.content = small_model
    store.log.clear()
    download(store, tmp_path, check=True)
    assert_all_correct(tmp_path, small_model)
    assert sorted(n for m, n, r in store.log) == sorted(blamed)


def test_cut_file_the_server_cannot_size_is_caught_by_the_load_check(store, tmp_path,
                                                                     small_model):
    store.content, store.md5, store.head = small_model, False, "nolength"
    store.plans[BIG] = ["nolength_cut"]  # nothing tells this from a whole file but loading it
    with pytest.raises(download_model.DownloadError, match=f"does not load, deleted {BIG}: "):
        download(store, tmp_path, check=True)
    assert not (model_dir(tmp_path) / BIG).exists()
    download(store, tmp_path, check=True)
    assert_all_correct(tmp_path, small_model)


def test_cli_says_in_one_line_that_the_model_does_not_load(store, tmp_path, small_model):
    """The one test that starts TensorFlow in the script: its messages must stay quiet."""
    store.content = {**small_model, "hparams.json": b"Service Unavailable\n"}
    store.md5 = False
    env = cli_env(GPT2_DOWNLOAD_CHECK="1")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the script quiets TensorFlow by itself
    proc = run_cli(tmp_path, store.base_url, MODEL, env=env, timeout=120)
    assert_one_error_line(proc, f"{model_dir(tmp_path)} does not load, deleted hparams.json: ",
                          "not valid JSON", f"; run `{repair(tmp_path, store)}` again")
    bars_and_error = [line for line in proc.stderr.splitlines()
                      if not line.strip() or "error:" in line or "|" in line]
    assert bars_and_error == proc.stderr.splitlines(), proc.stderr  # nothing from TensorFlow
    assert not (model_dir(tmp_path) / "hparams.json").exists()


@pytest.mark.parametrize("models_dir", ["models", "./models/", "/data/my models", "~/gpt2"])
def test_the_repair_command_is_the_one_the_library_gives(models_dir):
    """download_model.py runs without src/, so it builds the command itself: the same line as
    paths.download_command, plus --base_url when it is not the default."""
    import paths
    assert download_model.repair_command("355M", models_dir, download_model.DEFAULT_BASE_URL) == \
        paths.download_command("355M", models_dir)
    mirror = download_model.repair_command("355M", models_dir, "http://127.0.0.1:8000")
    assert mirror == paths.download_command("355M", models_dir) + " --base_url http://127.0.0.1:8000"


def test_the_library_knows_the_released_models_download_model_fetches():
    """paths.RELEASED, which says whether a missing model can be downloaded, is download_model.py's MODELS."""
    import paths
    assert paths.RELEASED == download_model.MODELS
