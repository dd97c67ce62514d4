"""Downloads that cannot hang (data/transfer.py). Hostile loopback servers (a trickle, silence after the
headers, headers that never end, a stream just fast enough to dodge the stall rule), a lock held by
another process or by one that was killed, and bad values of the three limits' variables."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from lstmcli.data.download import Limits, RemoteFile, fetch
from lstmcli.errors import DatasetError, LstmcliError

from .conftest import one_line_error, run

pytestmark = pytest.mark.hostile

FAST = {"LSTMCLI_STALL_TIMEOUT": "1", "LSTMCLI_FETCH_TIMEOUT": "30", "LSTMCLI_LOCK_TIMEOUT": "1"}
TEST_CSV = RemoteFile("ag_news", "ag_news_csv/test.csv", "https://example.invalid/test.csv", "0" * 32)


@pytest.fixture
def fast(monkeypatch):
    """Limits of about a second (the total limit far away unless a test lowers it)."""
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)


class Hostile(http.server.BaseHTTPRequestHandler):
    """Answers GET with `behaviour(self)`; SHA256SUMS is a 404, so that the file itself is fetched
    (with the upstream md5) unless `sums_too`. Stops when `stop` is set or the client goes away."""

    behaviour = None
    sums_too = False
    stop: threading.Event

    def do_GET(self):
        if self.path.endswith("/SHA256SUMS") and not self.sums_too:
            self.send_error(404)
            return
        with contextlib.suppress(OSError):  # the client cut the connection: what the limits are for
            type(self).behaviour(self)

    def headers_then(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def pause(self, seconds: float) -> bool:
        """Wait; True when the test is over."""
        return self.stop.wait(seconds)

    def log_message(self, *args):
        pass


def trickle(h):  # one byte every 0.3 s of a file announced as 100 kB
    h.headers_then(100_000)
    while not h.pause(0.3):
        h.wfile.write(b"x")


def silent_after_headers(h):
    h.headers_then(100_000)
    h.pause(30)


def endless_headers(h):  # the status line one byte at a time, never reaching the body
    for byte in b"HTTP/1.0 200 OK\r\nX-Slow: " + b"y" * 1000:
        if h.pause(0.3):
            return
        h.wfile.write(bytes([byte]))


def just_above_floor(h):  # 2 KiB every 0.1 s: never a stall, and 10 MB would take 8 minutes
    h.headers_then(10_000_000)
    while not h.pause(0.1):
        h.wfile.write(b"z" * 2048)


def bursty(h):  # 2 KiB, then a pause shorter than the stall limit, three times: healthy
    h.headers_then(3 * 2048)
    for _ in range(3):
        h.wfile.write(b"b" * 2048)
        if h.pause(0.6):
            return


def truncated(h):  # announces 1000 bytes, sends 10, hangs up
    h.headers_then(1000)
    h.wfile.write(b"0123456789")


@pytest.fixture
def serve():
    """serve(behaviour, sums_too=False) -> base URL of a loopback server; all stopped at the end."""
    servers, stop = [], threading.Event()

    def start(behaviour, sums_too=False) -> str:
        handler = type("H", (Hostile,), {"behaviour": staticmethod(behaviour), "sums_too": sums_too,
                                         "stop": stop})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    try:
        yield start
    finally:
        stop.set()  # handler threads end their loops; the servers stop accepting
        for server in servers:
            server.shutdown()
            server.server_close()


def leftovers(cache: Path) -> list[str]:
    return [p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def failed_fetch(remote, cache):
    """The error message of a fetch that must fail. (No clock is read: the message says which limit
    ended the fetch, and a fetch that hung would never give one.)"""
    with pytest.raises(DatasetError) as err:
        fetch(remote, cache)
    return str(err.value)


@pytest.mark.parametrize("behaviour", [trickle, silent_after_headers, endless_headers],
                         ids=["trickle", "silent-after-headers", "endless-headers"])
def test_a_stall_ends_the_fetch_within_seconds(behaviour, serve, fast, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMCLI_MIRROR", serve(behaviour))
    message = failed_fetch(TEST_CSV, tmp_path / "cache")
    for fragment in ("dataset 'ag_news'", "ag_news_csv/test.csv", "stalled", "less than 1024 bytes",
                     "in 1 s", "LSTMCLI_STALL_TIMEOUT", "nothing is cached"):
        assert fragment in message, message
    assert leftovers(tmp_path / "cache") == []


def test_a_trickling_mirror_ends_train_in_one_line(serve, fast, workdir, monkeypatch):
    monkeypatch.setenv("LSTMCLI_MIRROR", serve(trickle))
    result = run("train", "--dataset", "ag_news", "--out", "r")
    one_line_error(result, 2, "stalled", "LSTMCLI_STALL_TIMEOUT", "dataset 'ag_news'", "ag_news_csv/")
    assert leftovers(workdir) == [], leftovers(workdir)


def test_a_stalled_sha256sums_is_a_stall_not_a_fallback(serve, fast, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMCLI_MIRROR", serve(trickle, sums_too=True))
    message = failed_fetch(TEST_CSV, tmp_path / "cache")
    assert "SHA256SUMS stalled" in message and "LSTMCLI_STALL_TIMEOUT" in message, message


def test_total_limit_ends_a_stream_that_dodges_the_stall_rule(serve, fast, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMCLI_MIRROR", serve(just_above_floor))
    monkeypatch.setenv("LSTMCLI_FETCH_TIMEOUT", "1.5")
    message = failed_fetch(TEST_CSV, tmp_path / "cache")
    assert "not complete after 1.5 s" in message and "raise LSTMCLI_FETCH_TIMEOUT" in message, message
    assert "stalled" not in message  # it was fast enough for the stall rule all along
    assert leftovers(tmp_path / "cache") == []


def test_pauses_shorter_than_the_stall_limit_are_fine(serve, fast, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMCLI_MIRROR", serve(bursty))
    body = b"b" * 2048 * 3
    remote = RemoteFile("ag_news", "ag_news_csv/test.csv", "https://example.invalid/t",
                        hashlib.md5(body).hexdigest())
    assert fetch(remote, tmp_path / "cache").read_bytes() == body  # 1.2 s of pauses, none of 1 s


def test_a_body_cut_short_is_an_offline_error_not_a_checksum_one(serve, fast, workdir, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("LSTMCLI_MIRROR", serve(truncated))
    message = failed_fetch(TEST_CSV, tmp_path / "cache")
    assert "closed after 10 of 1000 bytes" in message and "LSTMCLI_MIRROR" in message, message
    assert leftovers(tmp_path / "cache") == []


HOLDER = textwrap.dedent("""
    import sys, time
    from contextlib import ExitStack
    from pathlib import Path
    from lstmcli.data.download import cache_lock
    with ExitStack() as stack:
        for key in sys.argv[2:]:
            stack.enter_context(cache_lock(Path(sys.argv[1]), key))
        print("locked", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def holder():
    """holder(cache, *keys) -> a process holding lstmcli's cache locks on `keys`; killed at the end."""
    procs = []

    def start(cache: Path, *keys: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMCLI_")}
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(cache), *keys], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        if not ready or proc.stdout.readline() != "locked\n":
            proc.kill()
            pytest.fail(f"the lock holder did not start: {proc.communicate()[1]}")
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()


def test_a_held_lock_is_waited_on_with_a_warning_then_given_up(mirror, fast, holder, tmp_path, caplog):
    cache = tmp_path / "cache"
    proc = holder(cache, "ag_news_csv_test.csv")
    with caplog.at_level(logging.WARNING, logger="lstmcli"):
        message = failed_fetch(TEST_CSV, cache)
    lock = cache / ".locks" / "ag_news_csv_test.csv.lock"
    for fragment in (f"gave up after 1 s waiting for the lock {lock}", f"(pid {proc.pid})",
                     "LSTMCLI_LOCK_TIMEOUT"):
        assert fragment in message, message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    for fragment in (f"(pid {proc.pid}) is fetching or extracting ag_news_csv_test.csv", "up to 1 s",
                     str(lock), "LSTMCLI_LOCK_TIMEOUT"):
        assert fragment in warnings[0], warnings[0]
    assert not (cache / "ag_news_csv" / "test.csv").exists()


def test_train_says_it_waits_then_gives_up_in_one_error_line(mirror, fast, holder, workdir):
    holder(workdir / "data", "ag_news_csv_train.csv", "ag_news_csv_test.csv")
    result = run("train", "--dataset", "ag_news", "--out", "r")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("lstmcli: another lstmcli process (pid ") and "waiting up to 1 s" in lines[0]
    assert lines[1].startswith("lstmcli: error: gave up after 1 s") and "LSTMCLI_LOCK_TIMEOUT" in lines[1]


def test_a_killed_holder_blocks_nobody(mirror, fast, holder, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    proc = holder(cache, "ag_news_csv_test.csv")
    proc.send_signal(signal.SIGKILL)  # no chance to release anything: the kernel drops its flock
    proc.wait(timeout=10)
    monkeypatch.setenv("LSTMCLI_LOCK_TIMEOUT", "30")  # a lock still held would end in an error
    with caplog.at_level(logging.WARNING, logger="lstmcli"):
        path = fetch(TEST_CSV, cache)
    assert path.read_bytes() == (mirror / TEST_CSV.name).read_bytes()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # not even a wait


def test_a_holder_killed_during_the_wait_frees_the_waiter_at_once(mirror, fast, holder, tmp_path,
                                                                  monkeypatch, caplog):
    cache = tmp_path / "cache"
    proc = holder(cache, "ag_news_csv_test.csv")
    monkeypatch.setenv("LSTMCLI_LOCK_TIMEOUT", "30")
    killer = threading.Timer(0.5, proc.send_signal, args=(signal.SIGKILL,))
    killer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="lstmcli"):
            assert fetch(TEST_CSV, cache).is_file()  # a lock still held would end in an error
    finally:
        killer.cancel()
    assert any("waiting up to 30 s" in r.getMessage() for r in caplog.records)


DEFAULTS = {"LSTMCLI_STALL_TIMEOUT": "60", "LSTMCLI_FETCH_TIMEOUT": "3600", "LSTMCLI_LOCK_TIMEOUT": "600"}
VARIABLES = list(DEFAULTS)


@pytest.mark.parametrize("name", VARIABLES)
@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-inf", "0", "-1", "1e999"])
def test_bad_values_are_one_clear_error(name, value, mirror, tmp_path, monkeypatch):
    cached = tmp_path / "cached"
    fetch(TEST_CSV, cached)
    monkeypatch.setenv(name, value)
    for cache in (tmp_path / "empty", cached):  # cached already: still an error, not a surprise later
        with pytest.raises(LstmcliError) as err:
            fetch(TEST_CSV, cache)
        assert str(err.value) == (f"{name}={value!r} is not a number of seconds above 0 "
                                  f"(unset, it is {DEFAULTS[name]})")
        assert err.value.exit_code == 2


@pytest.mark.parametrize("name", VARIABLES)
def test_a_bad_value_ends_train_in_one_line(name, mirror, workdir, monkeypatch):
    monkeypatch.setenv(name, "NaN")
    one_line_error(run("train", "--dataset", "ag_news", "--out", "r"), 2, f"{name}='NaN'", "seconds above 0")


def test_good_values_and_defaults(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert Limits.from_env() == Limits(60, 3600, 600)
    monkeypatch.setenv("LSTMCLI_STALL_TIMEOUT", " 2.5 ")
    monkeypatch.setenv("LSTMCLI_FETCH_TIMEOUT", "1e3")
    monkeypatch.setenv("LSTMCLI_LOCK_TIMEOUT", "")  # empty, as `VAR= lstmcli ...` leaves it: the default
    assert Limits.from_env() == Limits(2.5, 1000, 600)
