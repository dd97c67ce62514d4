"""`lstmcli serve`: a model behind HTTP on this machine (lstmcli/serving/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lstmcli.cli.options import DEFAULT_CHECKPOINT, Backend, BackendOpt, DeviceOpt, Quiet, default_text
from lstmcli.config import MAX_THREADS, Device
from lstmcli.errors import LstmcliError
from lstmcli.exits import user_errors

API_KEY_ENV = "LSTMCLI_API_KEY"
# a micro-batch gathers a few hundred texts of any lengths: sorted and cut into batches this narrow, each
# pads little, which gains more on either backend than wide batches do (benchmarks/RESULTS.md, "Serving")
SERVE_BATCH_SIZE = 16


@user_errors
def serve(
    model: Annotated[Path | None, typer.Argument(
        help="checkpoint or run folder, or an exported .onnx file " + "[default: runs/latest/best]",
        show_default=False)] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="the same as MODEL: a checkpoint folder, or a run folder (meaning its "
                                   "best/)", show_default=False)] = None,
    host: Annotated[str, typer.Option(
        help="address to listen on; 0.0.0.0 opens it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port; 0 takes a free one (printed)")] = 8000,
    backend: BackendOpt = Backend.auto,
    device: DeviceOpt = Device.auto,
    max_batch: Annotated[int, typer.Option(min=1, help="texts gathered from concurrent requests into one "
                                                       "batch, at most")] = 256,
    max_wait_ms: Annotated[float, typer.Option(min=0.0, help="how long a batch may wait for requests the "
                                                             "server is still receiving")] = 5.0,
    batch_size: Annotated[int, typer.Option(min=1, help="texts per model batch: what a micro-batch is cut "
                                                        "into, longest first")] = SERVE_BATCH_SIZE,
    threads: Annotated[int | None, typer.Option(
        min=1, max=MAX_THREADS, help="inference threads " + default_text(
            "one per core on onnx; on torch one per core but one, which the HTTP side keeps"),
        show_default=False)] = None,
    max_texts: Annotated[int, typer.Option(min=1, help="texts per request, at most")] = 256,
    max_text_chars: Annotated[int, typer.Option(min=1, help="characters per text, at most")] = 100_000,
    max_body: Annotated[int, typer.Option(min=1, help="request body in bytes, at most")] = 1 << 20,
    api_key: Annotated[str | None, typer.Option(
        envvar=API_KEY_ENV, show_envvar=False, help=f"require `Authorization: Bearer KEY` on /predict and "
        f"/metadata (env {API_KEY_ENV}, which keeps the key out of the process list)",
        show_default=False)] = None,
    max_concurrent: Annotated[int, typer.Option(
        min=1, help="requests handled at once; more are answered 503 at once (bounds memory: each may "
                    "hold --max-body bytes)")] = 1024,
    body_timeout: Annotated[float, typer.Option(min=0.001, help="seconds a request's body may take to "
                                                                "arrive; a slower one gets 408")] = 30.0,
    drain_timeout: Annotated[float, typer.Option(min=0.0, help="on SIGTERM, seconds to let the requests in "
                                                               "flight finish")] = 30.0,
    access_log: Annotated[bool, typer.Option("--access-log", help="log each request on stderr")] = False,
    quiet: Quiet = False,
) -> None:
    """Serve a model over HTTP: POST /predict answers as predict --json does; requests from many clients
    are gathered into micro-batches. GET /health, GET /metadata, and the API's pages at /docs.

    SIGTERM stops accepting, answers the requests in flight and exits 0. Needs the serve extra (FastAPI,
    uvicorn)."""
    from lstmcli import __version__
    if model is not None and checkpoint is not None and model != checkpoint:
        raise LstmcliError(f"two models: {model} and --checkpoint {checkpoint}; give one")
    path = model or checkpoint or DEFAULT_CHECKPOINT
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LstmcliError("serve needs FastAPI and uvicorn: pip install 'lstmcli[serve]'") from None
    if api_key is not None and not api_key.strip():
        raise LstmcliError(f"--api-key (or {API_KEY_ENV}) is empty; give a key or leave it unset")
    if api_key is not None and not (api_key.strip().isascii() and api_key.strip().isprintable()):
        # an HTTP header carries ASCII: a key of other characters could never be sent to match
        raise LstmcliError(f"--api-key (or {API_KEY_ENV}) must be printable ASCII characters")
    from lstmcli import api
    from lstmcli.runtime.onnx_model import physical_cores
    from lstmcli.serving import server
    from lstmcli.serving.app import Limits, create_app
    sock = server.bind(host, port)  # before the model loads: a port in use fails at once
    clf = api.load(path, device.value, backend=backend.value, threads=threads)
    if clf.backend == "torch":  # (the onnx backend sets its own, without importing torch)
        import torch
        api.tune_process()
        # torch's OpenMP threads wait for each other at every step of a recurrent layer: one of them
        # descheduled by the HTTP side stalls them all, so the event loop keeps a core of its own
        # (onnxruntime's thread pool copes, and takes every core: benchmarks/RESULTS.md, "Serving")
        threads = threads or max(1, physical_cores() - 1)
        torch.set_num_threads(threads)
    limits = Limits(max_texts, max_text_chars, max_body, max_batch, max_wait_ms, batch_size, max_concurrent,
                    body_timeout)
    about = {"model": str(clf.export.model if clf.export else clf.ck.path),
             "threads": threads or physical_cores(),
             "quantize": clf.export.meta.get("quantize") if clf.export else None}
    app = create_app(clf, limits, api_key and api_key.strip(), about)
    url = server.url_of(sock)
    auth = ", API key required" if api_key else ""
    typer.echo(f"lstmcli {__version__} serving {about['model']} ({clf.backend}{auth}) on {url} "
               f"(API pages: {url}/docs); SIGTERM or Ctrl-C stops", err=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.echo(f"lstmcli: warning: listening on {host} with no API key: anyone who can reach this "
                   "machine can use the model", err=True)
    server.run(app, sock, drain_timeout, access_log)
