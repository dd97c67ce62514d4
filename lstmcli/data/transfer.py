"""Reading a file from a folder or an HTTP(S) URL under time limits, so that no fetch can hang.

Three limits, in seconds, come from the environment:

- `LSTMCLI_STALL_TIMEOUT` (default 60), N below. A fetch fails as stalled when fewer than STALL_FLOOR
  bytes (1 KiB) of the file arrive within N seconds. Windows of N seconds are counted from the start of
  the request (connecting and the response headers are inside the first one), and a new one begins each
  time the current one has received 1 KiB. So a silent server, a server that sends its headers and then
  nothing, and one that trickles a byte now and then all end about N seconds after the last KiB.
- `LSTMCLI_FETCH_TIMEOUT` (default 3600): one file's whole fetch, from the request to the last byte.
  (A stream that keeps just above the floor passes the stall rule; this limit ends it.)
- `LSTMCLI_LOCK_TIMEOUT` (default 600): how long to wait for another process's lock on the same file,
  after a warning on stderr that names the file, the holder's pid and the wait.

Each must be a finite number above 0; unset or empty means the default; anything else is an error that
names the variable. Limits are checked as each piece of the file arrives (read with read1, which returns
what has come rather than waiting for a whole chunk) and, for a network source, by a watchdog thread that
shuts the connection's socket down once one has passed: a read blocked in the kernel sees no clock, and
a socket timeout restarts with every byte, so only a cut from outside ends a trickle. The socket timeout
stays at N as a second line of defence. A stall or a timeout leaves nothing in the cache.

The lock is an flock on Linux and macOS (portalocker's default there): it vanishes with the process that
held it, so a holder killed with SIGKILL blocks nobody.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from lstmcli.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    import socket

STALL_ENV, FETCH_ENV, LOCK_ENV = "LSTMCLI_STALL_TIMEOUT", "LSTMCLI_FETCH_TIMEOUT", "LSTMCLI_LOCK_TIMEOUT"
DEFAULT_STALL, DEFAULT_FETCH, DEFAULT_LOCK = 60.0, 3600.0, 600.0
STALL_FLOOR = 1024  # bytes that each stall window must receive
WATCH_EVERY = 0.1  # seconds between the watchdog's looks: a limit ends a fetch at most this much late


@dataclass(frozen=True)
class Limits:
    """The time limits of a fetch, in seconds (rules: the module docstring)."""

    stall: float = DEFAULT_STALL
    fetch: float = DEFAULT_FETCH
    lock: float = DEFAULT_LOCK

    @classmethod
    def from_env(cls) -> Limits:
        """The limits the environment sets; ConfigError (exit 2) naming the first bad variable."""
        return cls(seconds(STALL_ENV, DEFAULT_STALL), seconds(FETCH_ENV, DEFAULT_FETCH),
                   seconds(LOCK_ENV, DEFAULT_LOCK))


def seconds(name: str, default: float) -> float:
    """$`name` as seconds: unset or empty is `default`; anything but a finite number above 0 is an error."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # NaN, inf, 0 or less would disable or break the limit
        raise ConfigError(f"{name}={raw!r} is not a number of seconds above 0 (unset, it is {default:g})")
    return value


class FetchTimeout(DatasetError):
    """A fetch passed its stall or total time limit."""


class _Watch:
    """The stall and total limits of one transfer: `progress` checks them as pieces arrive; for a
    network source a watchdog thread checks them every WATCH_EVERY s and cuts the connection's socket,
    which ends a read blocked in the kernel (there the reader cannot look at the clock)."""

    def __init__(self, location: str, limits: Limits) -> None:
        """A watch whose first stall window and total limit start now."""
        self.location, self.limits = location, limits
        self.started = self.window = time.monotonic()
        self.got = self.in_window = 0
        self.reason: str | None = None
        self._sock: socket.socket | None = None
        self._guard = threading.Lock()  # got/window/reason/_sock are shared with the watchdog
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, network: bool) -> None:
        """Start the watchdog when there is a connection to cut (a local file cannot stall for ever)."""
        if network:
            self._thread = threading.Thread(target=self._run, name="lstmcli-fetch-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the watchdog; from now on nothing is cut and no limit is recorded."""
        with self._guard:
            self._done.set()
            self._sock = None
        if self._thread is not None:
            self._thread.join()

    def attach(self, sock: socket.socket) -> None:
        """Watch a new connection's socket; cut it at once if a limit passed while it was connecting."""
        with self._guard:
            if not self._done.is_set():
                self._sock = sock
                if self.reason:
                    _cut(sock)

    def progress(self, n: int) -> None:
        """Count `n` bytes that just arrived; FetchTimeout once a limit has passed."""
        with self._guard:
            now = time.monotonic()
            self.got += n
            self.in_window += n
            self.reason = self.reason or self._broken(now)  # before a reset: a late KiB is still late
            if self.in_window >= STALL_FLOOR:  # this window has had its floor: the next one starts now
                self.window, self.in_window = now, 0
        self.check()

    def timed_out(self) -> None:
        """The socket was silent for the stall limit: that is the stall rule's case, reported as such."""
        with self._guard:
            self.reason = self.reason or self._stalled()

    def check(self) -> None:
        """FetchTimeout if a limit ended this transfer (also when the cut made the read look like EOF)."""
        if self.reason:
            raise FetchTimeout(f"{self.location} {self.reason}") from None

    def _broken(self, now: float) -> str | None:
        """Why the transfer must end at `now`, or None; the caller holds the guard."""
        if now - self.started > self.limits.fetch:
            return (f"was not complete after {self.limits.fetch:g} s ({self.got} bytes arrived); "
                    f"raise {FETCH_ENV} (seconds) to allow more time")
        if now - self.window > self.limits.stall:
            return self._stalled()
        return None

    def _stalled(self) -> str:
        """The stall message."""
        return (f"stalled: less than {STALL_FLOOR} bytes arrived in {self.limits.stall:g} s "
                f"({self.got} bytes in all); raise {STALL_ENV} (seconds) for a slow link")

    def _run(self) -> None:
        """The watchdog thread: once a limit has passed, cut the connection (or let attach() cut it)."""
        while not self._done.wait(WATCH_EVERY):
            with self._guard:
                if self._done.is_set():  # stop() won the guard: the transfer is over, whatever the clock
                    return
                self.reason = self.reason or self._broken(time.monotonic())
                if self.reason and self._sock is not None:
                    _cut(self._sock)
                    return


def _cut(sock: socket.socket) -> None:
    """Shut `sock` down so that a read blocked on it in another thread returns (EOF or an error).

    socket.socket's own shutdown, also for an SSLSocket: that one's override drops its SSL object,
    which the reading thread is using; the plain one only ends the TCP stream under it."""
    import socket

    with contextlib.suppress(OSError):  # already closed: nothing left to cut
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@contextmanager
def watching(location: str, limits: Limits) -> Iterator[_Watch]:
    """A _Watch over a transfer from `location`: an error that a limit caused (the cut, the socket
    timeout) comes out as FetchTimeout; a malformed HTTP response as ConnectionError, like other
    network failures."""
    watch = _Watch(location, limits)
    watch.start(network=is_remote(location))
    try:
        yield watch
    except Exception as exc:
        if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            watch.timed_out()
        watch.check()
        import http.client  # here: only a failed fetch pays for it

        if isinstance(exc, http.client.HTTPException):  # not an OSError, yet a network failure all the same
            raise ConnectionError(f"broken HTTP response ({exc!r})") from None
        raise
    finally:
        watch.stop()
    watch.check()  # a cut read ends like EOF: the loop stopped without an error


def is_remote(location: str) -> bool:
    """Whether `location` is fetched with urllib (a URL other than file://)."""
    return "://" in location and not location.startswith("file://")


def open_source(location: str, watch: _Watch) -> BinaryIO:
    """`location` opened for reading: a local file, or an HTTP(S) response whose socket `watch` can cut."""
    if not is_remote(location):
        return open(location.removeprefix("file://"), "rb")
    import urllib.request  # 40 ms to import: only when a file really comes over the network

    handlers = [cls() for cls in _watched_handlers()]
    for handler in handlers:
        handler.watch = watch
    # the socket timeout (connect, and each read) at the stall limit: a second line of defence
    return urllib.request.build_opener(*handlers).open(location, timeout=watch.limits.stall)


@functools.cache
def _watched_handlers() -> tuple[type, ...]:
    """urllib's HTTP and HTTPS handlers, changed so that each connection hands its socket to the
    handler's `watch` once connected (redirects included: each new connection replaces the last)."""
    import urllib.request

    class Watched:
        """The change: do_open builds its connection through _watched_connection."""

        watch: _Watch

        def do_open(self, http_class, req, **kwargs):
            """urllib's do_open, building connections that report their socket."""
            factory = functools.partial(_watched_connection, http_class, self.watch)
            return super().do_open(factory, req, **kwargs)

    bases = [urllib.request.HTTPHandler] + [getattr(urllib.request, "HTTPSHandler", None)]  # no ssl: none
    return tuple(type(f"Watched{base.__name__}", (Watched, base), {}) for base in bases if base)


def _watched_connection(http_class: type, watch: _Watch, *args: Any, **kwargs: Any) -> Any:
    """An `http_class` connection (http.client's API) that hands its socket to `watch` once connected."""
    conn = http_class(*args, **kwargs)
    connect = conn.connect

    def connect_and_report() -> None:
        """http.client's connect, then the socket to the watch."""
        connect()
        watch.attach(conn.sock)

    conn.connect = connect_and_report  # http.client opens the connection through self.connect()
    return conn


def size_of(handle: BinaryIO, location: str) -> int | None:
    """The size `handle` will deliver, when its headers or the file system say so."""
    headers = getattr(handle, "headers", None)  # an HTTP response
    if headers is not None and headers.get("Content-Length"):
        return int(headers["Content-Length"])
    try:
        return os.path.getsize(location.removeprefix("file://"))
    except OSError:
        return None
