"""download_model.py against a real HTTP server on 127.0.0.1 that can misbehave on demand.

End-to-end cases run the CLI in a subprocess; finer cases call `fetch_file` directly.
"""
import base64
import hashlib
import os
import random
import re
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "download_model.py")
MODEL = "124M"
BIG = "model.ckpt.data-00000-of-00001"
CONTENT = {name: f'{{"file": "{name}"}}\n'.encode() * 20 for name in download_model.FILES}
CONTENT[BIG] = random.Random(0).randbytes(8 * download_model.CHUNK_BYTES)  # 512 KiB
FORBIDDEN_XML = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>PublicAccessNotPermitted'
                 b'</Code><Message>Public access is not permitted on this storage account.'
                 b'</Message></Error>')


def md5_b64(data):
    """Base64 of the MD5 digest, as Azure's Content-MD5 header carries it."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


class FakeStore(ThreadingHTTPServer):
    """Serves CONTENT under /gpt-2/models/124M/; `plans` scripts the next answers per file."""

    daemon_threads = True  # a handler stuck writing to a killed client must not block shutdown

    def __init__(self):
        super().__init__(("127.0.0.1", 0), StoreHandler)
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}/gpt-2"
        self.plans = {}  # file name -> behaviours for its next GETs, then `default`
        self.default = "ok"
        self.range_md5_header = "Content-MD5"  # Azure uses x-ms-blob-content-md5 on a 206
        self.log = []  # (method, file name, Range header or None)
        self.closing = threading.Event()
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):
        """Clients that hang up (killed, timed out) are part of the tests, not server errors."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def next_behaviour(self, method, name, range_header):
        """Record a request and pick how to answer it."""
        with self.lock:
            self.log.append((method, name, range_header))
            plan = self.plans.get(name)
            return plan.pop(0) if plan else self.default

    def gets(self, name=None):
        """Range headers of the GETs received, for one file or for all."""
        return [r for m, n, r in self.log if m == "GET" and name in (None, n)]


class StoreHandler(BaseHTTPRequestHandler):
    """GET with Range and Content-MD5, plus scripted failures."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        prefix = f"/gpt-2/models/{MODEL}/"
        name = self.path[len(prefix):] if self.path.startswith(prefix) else None
        behaviour = self.server.next_behaviour(self.command, name, self.headers.get("Range"))
        if name not in CONTENT:
            return self.reply(404, b"<Error><Code>BlobNotFound</Code></Error>")
        if behaviour == "forbidden":
            return self.reply(403, FORBIDDEN_XML, {"Content-Type": "application/xml"})
        if behaviour == "error500":
            return self.reply(500, b"<Error><Code>InternalError</Code></Error>")
        self.serve(CONTENT[name], behaviour)

    def serve(self, data, behaviour):
        """200 or 206 with the true Content-MD5, bending the body as `behaviour` says."""
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and behaviour != "norange" else 0
        if start >= len(data) > 0:
            return self.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        headers = {"Content-MD5": md5_b64(data)}
        if start:
            headers = {self.server.range_md5_header: md5_b64(data),
                       "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        if behaviour == "corrupt":
            body = body[:-1] + bytes([body[-1] ^ 1])
        self.send_head(206 if start else 200, len(body), headers)
        if behaviour in ("cut", "stall"):  # the full Content-Length was promised
            body = body[:len(body) // 2]
            self.close_connection = True
        self.send_body(body, delay_s=0.01 if behaviour == "slow" else 0)
        if behaviour == "stall":  # silent until the client times out
            self.server.closing.wait(5)

    def send_body(self, body, delay_s):
        for i in range(0, len(body), 4096):
            if self.server.closing.is_set():
                break
            try:
                self.wfile.write(body[i:i + 4096])
            except OSError:  # the client was killed
                self.close_connection = True
                return
            time.sleep(delay_s)

    def send_head(self, status, length, headers):
        self.send_response(status)
        for key, value in {"Content-Length": str(length), **headers}.items():
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


def run_cli(tmp_path, base_url, *extra, env=None):
    """Run the script in a subprocess with cwd tmp_path; return the CompletedProcess."""
    return subprocess.run(cli_args(tmp_path, base_url, *extra) if base_url else
                          [sys.executable, SCRIPT, *extra], cwd=tmp_path, env=env or cli_env(),
                          capture_output=True, text=True, timeout=30)


def model_dir(tmp_path):
    return tmp_path / "models" / MODEL


def assert_all_correct(tmp_path):
    """Every final file holds exactly the served bytes and no .part is left."""
    folder = model_dir(tmp_path)
    assert sorted(os.listdir(folder)) == sorted(download_model.FILES)
    for name, data in CONTENT.items():
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


def test_403_xml_is_one_line_and_saves_nothing(store, tmp_path):
    store.default = "forbidden"
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert_one_error_line(proc, f"{store.base_url}/models/{MODEL}/checkpoint", "403")
    assert "<Error>" not in proc.stderr + proc.stdout
    assert len(store.gets()) == 1  # 4xx is not retried
    assert final_files(tmp_path / "models") == []


def test_404_for_unknown_model(store, tmp_path):
    proc = run_cli(tmp_path, store.base_url, "999M")
    assert_one_error_line(proc, f"{store.base_url}/models/999M/checkpoint", "404")
    assert final_files(tmp_path / "models") == []


def test_corrupt_body_is_rejected_and_deleted(store, tmp_path):
    store.plans[BIG] = ["corrupt"]
    proc = run_cli(tmp_path, store.base_url, MODEL)
    assert_one_error_line(proc, BIG, "MD5")
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
                          "interrupted", status=130)
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


# Finer cases: fetch_file called directly.

class RecordingBar:
    """Stands in for tqdm and remembers what the bars were told."""

    bars = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates = kwargs, []
        RecordingBar.bars.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.updates.append(n)

    write = staticmethod(lambda *args, **kwargs: None)


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
