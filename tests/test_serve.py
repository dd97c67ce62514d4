"""`lstmcli serve`, tested as a user meets it: a real server process on a free loopback port, spoken to
over HTTP (the standard library's http.client). Its answers are `predict --json`'s; every bad request is
a 4xx with a one-line JSON error and the server goes on; 100 concurrent clients are answered correctly
in fewer batches than requests; SIGTERM with requests in flight answers them all and exits 0."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from lstmcli import checkpoint, config
from lstmcli.data.text import Vocab
from lstmcli.runtime.plan import build_model, choose, model_spec

from .conftest import TINY, ok, run

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

WORDS = ["good", "great", "bad", "awful", "film", "plot", "acting", "boring", "moving", "the", "a", "not"]
TEXTS = ["a great moving film", "awful boring plot", "", "not good, not bad: the acting!", "film " * 300,
         "ünïcödé 🎬 film", "the\tplot\nis great"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A checkpoint of the tiny config's shape with seeded random weights (serving does not care how
    good they are), and its int8 export beside it as model.int8.onnx."""
    folder = tmp_path_factory.mktemp("serve") / "ck"
    torch.manual_seed(0)
    cfg = config.resolve(TINY)
    vocab = Vocab(["<pad>", "<unk>", *WORDS])
    chosen = choose(cfg.model, torch.device("cpu"), trained=cfg.model.precision)
    spec = model_spec(cfg.model, len(vocab), 2, chosen)
    checkpoint.save(folder, cfg, vocab, ["neg", "pos"], build_model(spec).eval(), {})
    return folder


class Server:
    """`python -m lstmcli serve ARGS` on port 0; `url` is what it printed."""

    def __init__(self, *args, env: dict | None = None):
        command = [sys.executable, "-m", "lstmcli", "serve", *map(str, args), "--port", "0"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            if " on http://" in line:
                self.host, self.port = line.split(" on http://")[1].split()[0].split(":")
                self.port = int(self.port)
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.proc.kill()
        raise AssertionError("the server did not start:\n" + "".join(self.lines) + self.proc.stderr.read())

    def _drain(self) -> None:  # keep reading stderr so that the server never blocks on a full pipe
        for line in self.proc.stderr:
            self.lines.append(line)

    def request(self, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 60):
        """(status, parsed JSON, raw body, headers) of one request on its own connection."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw), raw, dict(response.getheaders())
        finally:
            conn.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(model_dir):
    srv = Server(model_dir, "--max-texts", "16", "--max-text-chars", "2000", "--max-body", "20000",
                 "--max-wait-ms", "50", "--backend", "torch", "--body-timeout", "1")
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in "".join(srv.lines)


def predict_json(model, texts, *flags) -> list[dict]:
    result = ok(run("predict", "-c", model, "--json", *flags, *texts))
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_same(served: list[dict], expected: list[dict]) -> None:
    """Equal objects; probabilities within float32 rounding (the batch a text joins may differ)."""
    assert len(served) == len(expected)
    for got, want in zip(served, expected, strict=True):
        assert got.keys() == want.keys() == {"index", "label", "probability", "top_k"}
        assert (got["index"], got["label"]) == (want["index"], want["label"])
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
        for g, w in zip([got, *got["top_k"]], [want, *want["top_k"]], strict=True):
            assert g["probability"] == pytest.approx(w["probability"], abs=1e-6)


def test_predict_answers_as_predict_json_does(server, model_dir):
    status, body, raw, headers = server.request("POST", "/predict", {"texts": TEXTS, "top_k": 2})
    assert status == 200 and headers["content-type"] == "application/json"
    assert_same(body["predictions"], predict_json(model_dir, TEXTS, "--top-k", "2", "--backend", "torch"))
    status, body, *_ = server.request("POST", "/predict", {"texts": TEXTS[:3], "threshold": 0.3})
    assert_same(body["predictions"], predict_json(model_dir, TEXTS[:3], "--threshold", "0.3",
                                                  "--backend", "torch"))


def test_health_metadata_and_openapi(server, model_dir):
    assert server.request("GET", "/health")[:2] == (200, {"status": "ok"})
    status, meta, *_ = server.request("GET", "/metadata")
    assert status == 200 and meta["labels"] == ["neg", "pos"] and meta["backend"] == "torch"
    assert meta["config"]["model"]["hidden_size"] == 32 and meta["limits"]["max_texts"] == 16
    assert meta["model"] == str(model_dir) and "lstmcli" in meta
    status, spec, *_ = server.request("GET", "/openapi.json")
    schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert status == 200 and set(schema["properties"]) == {"texts", "top_k", "threshold"}
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("GET", "/docs")
    assert conn.getresponse().status == 200


BAD = [  # body (bytes or JSON), status, a fragment of the error
    (b'{"texts": ["a"', 400, "malformed JSON"),
    (b"not json at all", 400, "malformed JSON"),
    ({"texts": "a film"}, 422, "texts"),
    ({"texts": ["ok", 3]}, 422, "texts[1]"),
    ({"texts": ["ok"], "top_k": "2"}, 422, "top_k"),
    ({"texts": ["ok"], "top_k": 0}, 422, "top_k"),
    ({"texts": ["ok"], "threshold": 1.5}, 422, "threshold"),
    ({"texts": ["ok"], "colour": "blue"}, 422, "colour"),
    ({"top_k": 1}, 422, "texts"),
    (["a", "b"], 422, "object"),
    ({"texts": []}, 422, "empty"),
    ({"texts": ["a"] * 17}, 413, "--max-texts 16"),
    ({"texts": ["ok", "x" * 2001]}, 413, "texts[1]"),
    ({"texts": ["a " * 12000]}, 413, "--max-body"),
]


@pytest.mark.parametrize("body,status,fragment", BAD)
def test_bad_requests_get_a_4xx_and_one_line_of_json(server, body, status, fragment):
    got, answer, raw, _ = server.request("POST", "/predict", body, {"Content-Type": "application/json"})
    assert got == status and set(answer) == {"error"} and fragment in answer["error"]
    assert raw.count(b"\n") == 0 and b"Traceback" not in raw
    assert server.request("POST", "/predict", {"texts": ["still here"]})[0] == 200


def test_a_chunked_body_over_the_limit_is_refused_as_it_comes(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("POST", "/predict", body=iter([b'{"texts": ["', b"a" * 15000, b"a" * 15000, b'"]}']),
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "--max-body" in json.loads(response.read())["error"]


def whole_response(sock: socket.socket) -> bytes:
    """A response read from a raw socket up to the end of its Content-Length body (recv may return the
    head and the body apart)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            size = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if size is None or len(body) >= int(size.group(1)):
                break
    return data


def test_a_stalled_or_vanished_body_frees_its_slot_without_a_traceback(server):
    stalled = socket.create_connection((server.host, server.port), timeout=30)
    stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    answer = whole_response(stalled)  # after --body-timeout 1 s
    assert answer.startswith(b"HTTP/1.1 408") and b'{"error":"the request body did not arrive' in answer
    stalled.close()
    gone = socket.create_connection((server.host, server.port), timeout=30)
    gone.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"texts\": [\"a")
    gone.close()
    time.sleep(0.5)
    assert server.request("POST", "/predict", {"texts": ["still here"]})[0] == 200
    assert "Traceback" not in "".join(server.lines)


@pytest.mark.parametrize("method,path,status", [("GET", "/nowhere", 404), ("GET", "/predict", 405),
                                                ("DELETE", "/health", 405)])
def test_unknown_paths_and_methods_answer_in_json(server, method, path, status):
    got, answer, raw, _ = server.request(method, path)
    assert got == status and set(answer) == {"error"} and b"\n" not in raw


def test_one_hundred_concurrent_requests_are_batched_and_each_answered(server, model_dir):
    texts = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} film number {i}" for i in range(100)]
    before = server.request("GET", "/metadata")[1]["served"]
    with ThreadPoolExecutor(100) as pool:
        ask = lambda text: server.request("POST", "/predict", {"texts": [text], "top_k": 2})  # noqa: E731
        answers = list(pool.map(ask, texts))
    assert all(status == 200 for status, *_ in answers)
    expected = predict_json(model_dir, texts, "--top-k", "2", "--backend", "torch")
    assert_same([{**a[1]["predictions"][0], "index": i} for i, a in enumerate(answers)], expected)
    after = server.request("GET", "/metadata")[1]["served"]
    assert after["texts"] - before["texts"] == 100
    assert after["batches"] - before["batches"] < 100  # gathered, not one batch per request


def test_an_api_key_is_required_when_set(model_dir):
    srv = Server(model_dir, "--backend", "torch", env={"LSTMCLI_API_KEY": "s3cret"})
    try:
        status, answer, _, headers = srv.request("POST", "/predict", {"texts": ["a"]})
        assert status == 401 and "API key" in answer["error"] and headers["www-authenticate"] == "Bearer"
        assert srv.request("POST", "/predict", {"texts": ["a"]}, {"Authorization": "Bearer nope"})[0] == 401
        assert srv.request("GET", "/metadata")[0] == 401
        assert srv.request("POST", "/predict", {"texts": ["a"]}, {"Authorization": "Bearer s3cret"})[0] == 200
        assert srv.request("GET", "/health")[0] == 200
        assert "API key required" in "".join(srv.lines) and "s3cret" not in "".join(srv.lines)
    finally:
        assert srv.stop() == 0


class SlowUpload:
    """A POST /predict whose body comes in two parts: while the second is held back the request is
    still being received, and the batch being gathered waits for it (--max-wait-ms at most)."""

    def __init__(self, srv: Server, text: str):
        self.body = json.dumps({"texts": [text]}).encode()
        self.sock = socket.create_connection((srv.host, srv.port), timeout=60)
        self.sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(self.body) + self.body[:5])

    def finish(self) -> tuple[int, dict]:
        self.sock.sendall(self.body[5:])
        response = http.client.HTTPResponse(self.sock)
        response.begin()
        answer = (response.status, json.loads(response.read()))
        self.sock.close()
        return answer


def test_a_lone_request_is_not_kept_waiting(model_dir):
    srv = Server(model_dir, "--backend", "torch", "--max-wait-ms", "60000")
    try:  # no other request on its way: the batch goes at once, not after a minute
        assert srv.request("POST", "/predict", {"texts": ["a film"]}, timeout=30)[0] == 200
    finally:
        assert srv.stop() == 0


def test_sigterm_answers_the_requests_in_flight_then_exits_0(model_dir):
    srv = Server(model_dir, "--backend", "torch", "--max-wait-ms", "3000", "--max-batch", "1000")
    texts = [f"great film {i}" for i in range(20)]
    slow = SlowUpload(srv, "a slow upload")
    time.sleep(0.3)  # being received: the batch below waits for it
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(srv.request, "POST", "/predict", {"texts": [t]}) for t in texts]
        time.sleep(0.5)  # all sent, all waiting for the slow upload to join their batch
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        slow_answer = slow.finish()  # still answered: it was in flight when the signal came
        answers = [f.result() for f in futures]
    assert srv.proc.wait(timeout=60) == 0
    assert slow_answer[0] == 200 and slow_answer[1]["predictions"][0]["index"] == 0
    assert [status for status, *_ in answers] == [200] * 20
    expected = predict_json(model_dir, texts, "--backend", "torch")
    assert_same([{**a[1]["predictions"][0], "index": i} for i, a in enumerate(answers)], expected)
    with pytest.raises(OSError):
        srv.request("GET", "/health", timeout=5)
    assert "stopped (SIGTERM)" in "".join(srv.lines)


def test_an_int8_export_is_served_by_onnxruntime(model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "m.int8.onnx"
    ok(run("export", "-c", model_dir, "--quantize", "int8", "--out", onnx_file))
    srv = Server(onnx_file)
    try:
        meta = srv.request("GET", "/metadata")[1]
        assert meta["backend"] == "onnx" and meta["quantize"] == "int8" and meta["model"] == str(onnx_file)
        status, body, *_ = srv.request("POST", "/predict", {"texts": TEXTS, "top_k": 2})
        assert status == 200
        assert_same(body["predictions"], predict_json(onnx_file, TEXTS, "--top-k", "2"))
    finally:
        assert srv.stop() == 0


def test_a_port_in_use_is_one_line_and_exit_2(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "lstmcli", "serve", str(model_dir), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("lstmcli: error: cannot listen on 127.0.0.1:")
    assert proc.stderr.count("\n") == 1


def test_serve_refuses_what_it_cannot_serve(model_dir, tmp_path):
    for args, fragment in [(["nowhere"], "no checkpoint at nowhere"),
                           ([model_dir, "-c", tmp_path], "two models"),
                           ([model_dir, "--backend", "onnx"], "holds no export"),
                           ([model_dir, "--api-key", " "], "empty"),
                           ([model_dir, "--api-key", "clé"], "printable ASCII")]:
        result = run("serve", *args, "--port", "0")
        assert result.exit_code == 2 and fragment in result.stderr and result.stderr.count("\n") == 1


def test_the_listening_socket_is_tcp_so_asyncio_turns_nagle_off():
    from lstmcli.serving.server import bind
    sock = bind("127.0.0.1", 0)
    try:  # asyncio sets TCP_NODELAY on accepted sockets only when proto says TCP; else each answer waits
        assert sock.proto == socket.IPPROTO_TCP  # for the client's delayed ACK (tens of ms)
    finally:
        sock.close()


def test_requests_over_max_concurrent_get_503_at_once(model_dir):
    srv = Server(model_dir, "--backend", "torch", "--max-concurrent", "3", "--max-wait-ms", "20000",
                 "--max-batch", "1000")
    try:
        slow = SlowUpload(srv, "a slow upload")
        time.sleep(0.3)
        with ThreadPoolExecutor(5) as pool:
            held = [pool.submit(srv.request, "POST", "/predict", {"texts": [f"film {i}"]}) for i in range(2)]
            time.sleep(0.5)  # three in the server: two waiting for the slow upload to join their batch
            refused = [srv.request("POST", "/predict", {"texts": ["one more"]}) for _ in range(3)]
            assert slow.finish()[0] == 200
            assert [f.result()[0] for f in held] == [200, 200]
        assert all(code == 503 and "--max-concurrent 3" in answer["error"] for code, answer, *_ in refused)
        assert srv.request("POST", "/predict", {"texts": ["after"]})[0] == 200
    finally:
        assert srv.stop() == 0


def test_a_model_that_fails_gets_500_in_one_line_and_the_server_goes_on(model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "m.onnx"
    ok(run("export", "-c", model_dir, "--out", onnx_file))
    meta = json.loads(onnx_file.with_suffix(".json").read_text())  # a vocabulary past the model's table:
    meta["vocab"] += [f"w{i}" for i in range(100)]  # onnxruntime fails on the ids beyond it
    onnx_file.with_suffix(".json").write_text(json.dumps(meta))
    srv = Server(onnx_file)
    try:
        status, answer, raw, _ = srv.request("POST", "/predict", {"texts": ["w99"]})
        assert status == 500 and "the model failed on this request" in answer["error"] and b"\n" not in raw
        assert srv.request("POST", "/predict", {"texts": ["a film"]})[0] == 200
    finally:
        assert srv.stop() == 0
    log = "".join(srv.lines)
    assert "predict failed: CheckpointError: onnxruntime failed on" in log and "Traceback" not in log


def test_a_multi_label_model_answers_its_label_sets(tmp_path):
    """A multi-label checkpoint with stored thresholds: each text's labels over them, as predict --json."""
    folder = tmp_path / "multi"
    torch.manual_seed(1)
    cfg = config.apply(config.resolve(TINY), {"data": {"multi_label": True}}, "test")
    vocab = Vocab(["<pad>", "<unk>", *WORDS])
    chosen = choose(cfg.model, torch.device("cpu"), trained=cfg.model.precision)
    spec = model_spec(cfg.model, len(vocab), 3, chosen, multi_label=True)
    checkpoint.save(folder, cfg, vocab, ["a", "b", "c"], build_model(spec).eval(),
                    {"thresholds": {"a": 0.3, "b": 0.5, "c": 0.7}})
    texts = ["a great moving film", "awful boring plot", "the acting"]
    srv = Server(folder, "--backend", "torch")
    try:
        for body, flags in (({"texts": texts}, []), ({"texts": texts, "threshold": 0.0, "top_k": 2},
                                                     ["--threshold", "0", "--top-k", "2"])):
            status, answer, _, _ = srv.request("POST", "/predict", body)
            assert status == 200, answer
            want = predict_json(folder, texts, "--backend", "torch", *flags)
            for got, expected in zip(answer["predictions"], want, strict=True):
                assert got.keys() == {"index", "labels"}
                assert [x["label"] for x in got["labels"]] == [x["label"] for x in expected["labels"]]
        assert all(len(p["labels"]) == 2 for p in answer["predictions"])
    finally:
        assert srv.stop() == 0
