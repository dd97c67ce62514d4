"""The HTTP application: POST /predict, GET /health, GET /metadata, and FastAPI's OpenAPI pages (/docs,
/openapi.json).

Every answer is JSON, errors included: one object {"error": "one line"} with a 4xx status for what a
client got wrong (malformed JSON 400, missing or wrong token 401, unknown path 404, too large 413,
anything else about the request 422), 503 while --max-concurrent requests are already being handled,
500 for a failure of the server's own, which is logged as one line and never stops the server. The body
is read against --max-body before it is parsed, so an oversized request costs no more than the limit.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from lstmcli import __version__
from lstmcli.inference.predict import Classifier, as_json
from lstmcli.serving.batcher import MicroBatcher

log = logging.getLogger(__name__)


@dataclass
class Limits:
    """What one request may hold, and how requests are gathered (`lstmcli serve`'s flags)."""

    max_texts: int = 256
    max_text_chars: int = 100_000
    max_body: int = 1 << 20
    max_batch: int = 256
    max_wait_ms: float = 5.0
    batch_size: int = 16
    max_concurrent: int = 1024
    body_timeout: float = 30.0


class PredictRequest(BaseModel):
    """POST /predict's body. Strict: no string for a number, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[str] = Field(description="the texts to classify, one prediction each, in order")
    top_k: int | None = Field(None, ge=1, description="labels per text, most probable first (default 1; "
                                                      "a multi-label model: all over their thresholds)")
    threshold: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False, description=(
        "two labels: predict the second label when its probability is at least this; multi-label: every "
        "label whose probability is at least this (default: each label's fitted threshold)"))


class LabelProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    """One text's answer: the object `lstmcli predict --json` prints for it (a single-label model: label,
    probability, top_k; a multi-label model: labels)."""

    index: int
    label: str | None = None
    probability: float | None = None
    top_k: list[LabelProbability] | None = None
    labels: list[LabelProbability] | None = None


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


def _validation_message(exc: ValidationError) -> tuple[int, str]:
    """A pydantic error as (status, one line): where in the body, then what is wrong."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return 400, f"malformed JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
    return 422, f"{where.lstrip('.') or 'body'}: {first['msg']}"


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused (413) as soon as it is known to pass `limit` bytes, and (408) when it has not
    all come within `timeout` seconds: a client that stalls mid-body must not hold a request slot."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {int(declared):,} bytes is over the server's --max-body "
                            f"{limit:,}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body is over the server's --max-body {limit:,} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within --body-timeout {timeout:g} s") from None
    except ClientDisconnect:  # nobody left to answer
        raise ApiError(400, "the client went away before its request body arrived") from None
    return b"".join(chunks)


def _check(body: PredictRequest, clf: Classifier, limits: Limits) -> None:
    """What the schema cannot say: an empty list, too many texts, a text too long, a threshold for a
    single-label model with more than two labels."""
    if not body.texts:
        raise ApiError(422, "texts: an empty list; give at least one text")
    if len(body.texts) > limits.max_texts:
        raise ApiError(413, f"texts: {len(body.texts):,} texts, over the server's --max-texts "
                            f"{limits.max_texts:,}")
    for i, text in enumerate(body.texts):
        if len(text) > limits.max_text_chars:
            raise ApiError(413, f"texts[{i}]: {len(text):,} characters, over the server's "
                                f"--max-text-chars {limits.max_text_chars:,}")
    if body.threshold is not None and len(clf.labels) != 2 and not clf.multi_label:
        raise ApiError(422, f"threshold: this model has {len(clf.labels)} labels, one per text; a threshold "
                            "decides between two, or a multi-label model's labels")


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` HTTP requests in the application at once; the next is answered
    503 before its body is read, so a flood of clients costs no more than `limit` bodies of memory."""

    cancelled = 0  # requests cut off by a shutdown (class-wide: server.run reads it once it has stopped)

    def __init__(self, app, limit: int):
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            busy = _error(503, f"the server is handling its --max-concurrent {self.limit} requests; retry")
            return await busy(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:  # uvicorn's drain timed out on SIGTERM: this one is lost
            self.cancelled += 1
            raise
        finally:
            self.active -= 1


def create_app(clf: Classifier, limits: Limits, api_key: str | None = None,
               about: dict | None = None) -> FastAPI:
    """The application serving `clf`; `api_key`: /predict and /metadata want `Authorization: Bearer KEY`."""
    batcher = MicroBatcher(lambda texts: clf.scores(texts, limits.batch_size), limits.max_batch,
                           limits.max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()  # uvicorn has drained the requests in flight by now

    app = FastAPI(title="lstmcli", version=__version__, lifespan=lifespan,
                  description="Text classification with an lstmcli model. With an API key set, /predict "
                              "and /metadata want the header `Authorization: Bearer KEY`.")
    app.add_middleware(ConcurrencyLimit, limit=limits.max_concurrent)
    key = api_key.encode() if api_key else None

    def authorize(request: Request) -> None:
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # 404, 405, ...
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.post("/predict", response_model=PredictResponse, summary="Classify texts", openapi_extra={
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(request: Request) -> JSONResponse:
        """The label and probability (and the top k) of each text: `lstmcli predict --json`'s objects."""
        with batcher.receiving():  # a batch being gathered waits for this request's texts
            authorize(request)
            raw = await _read_body(request, limits.max_body, limits.body_timeout)
            try:
                body = PredictRequest.model_validate_json(raw)
            except ValidationError as exc:
                raise ApiError(*_validation_message(exc)) from None
            _check(body, clf, limits)
            pending = batcher.enqueue(body.texts)
        try:  # (the request was checked whole above: what fails now is the server's, not the client's)
            rows = await pending
            ranked = clf.rank(rows, body.top_k, body.threshold)
        except Exception as exc:  # the model failed (out of memory, ...): this request's 500, not the end
            log.error("predict failed: %s: %s", type(exc).__name__, str(exc)[:300])
            raise ApiError(500, f"the model failed on this request ({type(exc).__name__})") from None
        return JSONResponse({"predictions": [as_json(i, r, clf.multi_label) for i, r in enumerate(ranked)]})

    @app.get("/health", summary="Whether the server is up (no API key needed)")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata", summary="The model: labels, backend, config, limits")
    async def metadata(request: Request) -> dict:
        authorize(request)
        return {"lstmcli": __version__, "backend": clf.backend, "labels": clf.labels,
                "max_length": clf.cut.length, "truncate": clf.cut.keep.value,
                **(about or {}), "limits": vars(limits), "config": clf.config,
                "served": {"batches": batcher.batches, "texts": batcher.texts}}

    return app
