"""Benchmark: `lstmcli serve` under load on loopback, against `predict -` on the same texts and backend.

    LSTMCLI_MIRROR=../shared/datasets python benchmarks/bench_serve.py --checkpoint runs/x/best
        [--backend torch onnx] [--clients 32 128] [--seconds 30] [--texts-per-request 1]

For each backend (onnx: the checkpoint's int8 export, made in a temporary folder) a server is started
(`lstmcli serve X --port 0`, its defaults otherwise), warmed up, then for each --clients count that
many clients, each on its own keep-alive connection, POST /predict with --texts-per-request IMDB test
reviews (cycled) back to back for --seconds (and at most 1,000,000 requests). Reported: requests/s,
texts/s, latency p50/p99, errors (non-200 answers and failed connections), the server's resident memory
after warm-up and at its peak (VmHWM). The clients are one asyncio process speaking raw HTTP/1.1, so
that the client costs the two cores as little as possible. Before each server, `predict -` with the same
backend on the same 5,000 reviews gives the batch throughput that serving is compared with (its start-up,
a one-text predict's time, left out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lstmcli.api import export
from lstmcli.data.splits import load_splits
from lstmcli.inference.predict import Classifier


def start_server(model: str, backend: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "lstmcli", "serve", model, "--backend", backend,
                             "--port", "0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if " on http://" in line:
            return proc, int(line.split(" on http://")[1].split()[0].rsplit(":", 1)[1])
    raise SystemExit("the server did not start")


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


async def client(port: int, bodies: list[bytes], start: int, stop_at: float, out: dict) -> None:
    """One keep-alive connection, requests back to back until `stop_at`."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        out["errors"] += 1
        return
    i = start
    while time.perf_counter() < stop_at and out["requests"] < 1_000_000:
        body = bodies[i % len(bodies)]
        i += 1
        sent = time.perf_counter()
        writer.write(b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, StopIteration):
            out["errors"] += 1
            return
        out["latency"].append(time.perf_counter() - sent)
        out["requests"] += 1
        if not head.startswith(b"HTTP/1.1 200"):
            out["errors"] += 1
    writer.close()


async def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    out = {"requests": 0, "errors": 0, "latency": []}
    stop_at = time.perf_counter() + seconds
    start = time.perf_counter()
    await asyncio.gather(*(client(port, bodies, i * 7, stop_at, out) for i in range(clients)))
    out["seconds"] = time.perf_counter() - start
    return out


def predict_rate(model: str, backend: str, texts: list[str]) -> float:
    """Texts/s of a fresh `predict -` over `texts`, its start-up (a one-text predict's time) left out: the
    server has started before it is measured too."""
    cmd = [sys.executable, "-m", "lstmcli", "predict", "-q", "-c", model, "--backend", backend]
    times = []
    for args, stdin in ((["-"], "".join(t + "\n" for t in texts).encode()), (["A short review."], b"")):
        start = time.perf_counter()
        subprocess.run(cmd + args, check=True, input=stdin, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return len(texts) / (times[0] - times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--backend", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--clients", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--texts-per-request", type=int, default=1)
    args = parser.parse_args()
    clf = Classifier(Path(args.checkpoint), "cpu", backend="torch")
    _, splits = load_splits(clf.ck.config.data)
    texts = [" ".join(t.split()) for t in splits["test"].texts[:5000]]
    k = args.texts_per_request
    bodies = [json.dumps({"texts": texts[i:i + k]}).encode() for i in range(0, len(texts) - k + 1, k)]
    print("| backend | clients | requests/s | texts/s | p50 | p99 | errors | RSS after warm-up -> peak | "
          "predict - texts/s | serve / predict |\n|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backend:
            model = args.checkpoint
            if backend == "onnx":
                model = str(export(args.checkpoint, Path(tmp) / "model.int8.onnx", quantize="int8")[0])
            batch = predict_rate(model, backend, texts)
            proc, port = start_server(model, backend)
            try:
                asyncio.run(load(port, bodies, 8, 5.0))  # warm-up: allocations reach their steady size
                warm = memory(proc.pid)["VmRSS"]
                for clients in args.clients:
                    got = asyncio.run(load(port, bodies, clients, args.seconds))
                    lat = sorted(got["latency"]) or [float("nan")]
                    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
                    rps = got["requests"] / got["seconds"]
                    peak = memory(proc.pid)["VmHWM"]
                    print(f"| {backend}{' int8' if backend == 'onnx' else ''} | {clients} | {rps:,.0f} | "
                          f"{rps * k:,.0f} | {p50 * 1000:,.0f} ms | {p99 * 1000:,.0f} ms | {got['errors']} | "
                          f"{warm:,.0f} -> {peak:,.0f} MiB | {batch:,.0f} | {rps * k / batch:.0%} |",
                          flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=120)
                if code != 0:
                    print(f"server exit code {code}", file=sys.stderr)


if __name__ == "__main__":
    main()
