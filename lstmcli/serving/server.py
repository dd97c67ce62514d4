"""Running the application under uvicorn: the socket bound first (a port in use is one clear error, and
port 0 takes a free one), then uvicorn serves on it until SIGTERM or Ctrl-C.

On SIGTERM uvicorn stops accepting, lets the requests in flight finish (at most `drain_timeout`
seconds), then runs the app's shutdown; afterwards it raises the signal again for the handler that was
there before it, which here only notes it, so `serve` returns and exits 0.
"""

from __future__ import annotations

import logging
import signal
import socket

from lstmcli.errors import LstmcliError

log = logging.getLogger(__name__)


BACKLOG = 2048  # connections the kernel holds for the server to accept (uvicorn's own default)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when host is one); OSError -> LstmcliError. It listens
    at once, so a client that connects while the model loads waits instead of being refused."""
    try:
        family, kind, proto = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][:3]
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that
        # say so, and with it on every small answer waits for the client's delayed ACK
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise LstmcliError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise LstmcliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """http://host:port of a bound socket (the port chosen when 0 was asked for)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _OneLine(logging.Filter):
    """uvicorn logs a request that failed inside it (a task cancelled by the drain timeout, ...) with
    its traceback: kept as one line naming the exception, as every lstmcli message is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            first = str(exc).splitlines()[0] if str(exc).strip() else ""
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {first}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def run(app, sock: socket.socket, drain_timeout: float, access_log: bool) -> None:
    """Serve `app` on `sock` until SIGTERM (returns) or Ctrl-C (KeyboardInterrupt once drained)."""
    import uvicorn

    from lstmcli.serving.app import ConcurrencyLimit
    logging.getLogger("uvicorn.error").addFilter(_OneLine())
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=access_log,
                            timeout_graceful_shutdown=drain_timeout, lifespan="on")
    server = uvicorn.Server(config)
    stopped = []
    # uvicorn hands SIGTERM back to this handler once it has drained: a stop asked for, not an error
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if not server.started:
        raise LstmcliError("the server did not start (see the lines above)")
    if ConcurrencyLimit.cancelled:
        log.warning("stopped: %d requests still in flight after --drain-timeout %gs were cut off",
                    ConcurrencyLimit.cancelled, drain_timeout)
    else:
        log.info("stopped%s", " (SIGTERM): the requests in flight were answered" if stopped else "")
