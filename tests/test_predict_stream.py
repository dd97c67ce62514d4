"""Streaming predict: `predict -` and `--input FILE` answer as the input comes, in order, with the batch
path's answers; CSV/TSV/JSONL files come back as rows with the prediction added."""

import csv
import io
import json
import os
import queue
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lstmcli.inference import stream
from lstmcli.inference.predict import Classifier

from .conftest import ok, one_line_error, run

TEXTS = ["A wonderful, moving film.", "Dull and far too long.", "", "caf\u00e9 \x85 line", "  spaced  "]


def test_micro_batches_keep_lines_as_wc_counts_them():
    raw = "one\r\ntwo \x85 still two\n\nbad @ byte\nlast without newline".encode().replace(b"@", b"\xff")
    lines = [line for batch in stream.micro_batches(io.BytesIO(raw), 2) for line in batch]
    assert lines == ["one", "two \x85 still two", "", "bad \ufffd byte", "last without newline"]


def test_micro_batches_are_full_on_a_file_and_in_order():
    data = "".join(f"{i}\n" for i in range(1000)).encode()
    batches = list(stream.micro_batches(io.BytesIO(data), 64))
    assert [len(b) for b in batches] == [64] * 15 + [40]
    assert [int(x) for b in batches for x in b] == list(range(1000))


def test_a_line_in_an_open_pipe_is_answered_before_the_pipe_closes():
    read_fd, write_fd = os.pipe()
    got: queue.Queue = queue.Queue()

    def consume():
        with os.fdopen(read_fd, "rb") as fh:
            for batch in stream.micro_batches(fh, 256):
                got.put(batch)
        got.put(None)

    threading.Thread(target=consume, daemon=True).start()
    os.write(write_fd, b"first line\n")
    assert got.get(timeout=30) == ["first line"]  # while the writer still holds the pipe open
    os.write(write_fd, b"second\nthird\n")
    assert got.get(timeout=30) == ["second", "third"]
    os.close(write_fd)
    assert got.get(timeout=30) is None


def test_an_endless_line_is_clipped_to_its_head_and_tail():
    keep = 1 << 20
    line = b"a " * (3 * keep) + b"end"
    [[text]] = list(stream.micro_batches(io.BytesIO(line + b"\nnext\n"[:0]), 4, keep=keep))
    assert len(text) == 2 * keep + 1
    assert text.startswith("a a ") and text.endswith("a end")
    assert stream.clip(b"short", keep) == b"short"


def test_streamed_answers_equal_the_batch_path(trained):
    texts = [f"review {i}: " + ("good " * (i % 7)) + ("bad " * (i % 5)) for i in range(700)] + TEXTS
    data = "\n".join(texts) + "\n"
    out = ok(predict(trained, "--json", "--batch-size", 16, "-", input=data)).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    clf = Classifier(trained / "best")
    expected = clf.predict(texts, top_k=1)
    assert [r["index"] for r in rows] == list(range(len(texts)))
    assert [r["label"] for r in rows] == [e[0][0] for e in expected]
    assert [r["probability"] for r in rows] == pytest.approx([e[0][1] for e in expected], abs=1e-6)


def test_predict_answers_each_line_of_a_live_pipe(trained):
    """`tail -f log | lstmcli predict -`: the answer to a line comes while stdin is still open."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lstmcli", "predict", "-c", str(trained), "-q", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        answers = []
        for text in (b"a wonderful film\n", b"utterly boring\n"):
            proc.stdin.write(text)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no answer while the pipe stays open"
            answers.append(proc.stdout.readline().decode())
        assert all(a.split("\t")[0] in ("neg", "pos") for a in answers)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        assert proc.stdout.read() == b""  # nothing held back
    finally:
        proc.kill()


def test_input_file_of_lines_and_output_file(trained):
    Path("texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    expected = ok(predict(trained, *TEXTS)).stdout
    ok(predict(trained, "--input", "texts.txt", "--output", "out.tsv"))
    assert Path("out.tsv").read_text() == expected
    one_line_error(predict(trained, "--input", "texts.txt", "--output", "out.tsv"), 2,
                   "out.tsv exists", "--force")
    ok(predict(trained, "--input", "texts.txt", "--output", "out.tsv", "--force"))
    one_line_error(predict(trained, "--input", "missing.txt"), 2, "missing.txt")
    one_line_error(predict(trained, "--input", "texts.txt", "also a text"), 2, "not both")
    one_line_error(predict(trained, "-", input=""), 2, "no texts")


def predict(trained, *args, input=None):
    """`lstmcli predict -c RUN/best ARGS...` (best/ itself: a run folder would add its stderr line)."""
    return run("predict", "-c", trained / "best", *args, input=input)


def _expected(trained, texts, top_k=1):
    return Classifier(trained / "best").predict(texts, top_k=top_k)


def test_csv_rows_come_back_with_the_prediction(trained):
    rows = [{"id": "1", "text": "A wonderful,\nmoving film.", "note": 'say "hi"'},
            {"id": "2", "text": "Dull and far too long.", "note": ""}]
    with open("in.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["id", "text", "note"])
        writer.writeheader()
        writer.writerows(rows)
    out = ok(predict(trained, "--input", "in.csv")).stdout
    back = list(csv.DictReader(io.StringIO(out)))
    expected = _expected(trained, [r["text"] for r in rows])
    assert list(back[0]) == ["id", "text", "note", "predicted_label", "predicted_probability"]
    for row, got, (best, *_) in zip(rows, back, expected, strict=True):
        assert {k: got[k] for k in row} == row
        assert got["predicted_label"] == best[0]
        assert float(got["predicted_probability"]) == pytest.approx(best[1], abs=1e-12)
    # scored again: the prediction columns are replaced, not added twice
    Path("scored.csv").write_text(out, encoding="utf-8")
    again = ok(predict(trained, "--input", "scored.csv")).stdout
    assert again == out


def test_tsv_headerless_and_top_k(trained):
    Path("in.tsv").write_text("7\tA wonderful film\n8\tDull\n", encoding="utf-8")
    out = ok(predict(trained, "--input", "in.tsv", "--text-column", "1", "--top-k", 2)).stdout
    lines = list(csv.reader(io.StringIO(out), delimiter="\t"))
    expected = _expected(trained, ["A wonderful film", "Dull"], top_k=2)
    assert [line[:2] for line in lines] == [["7", "A wonderful film"], ["8", "Dull"]]
    for line, ranked in zip(lines, expected, strict=True):
        assert line[2] == ranked[0][0]
        assert json.loads(line[4]) == [{"label": lab, "probability": pytest.approx(p, abs=1e-12)}
                                       for lab, p in ranked]


def test_jsonl_records_keep_their_keys(trained):
    recs = [{"id": 1, "review": "A wonderful film", "meta": {"stars": 5}}, {"id": 2, "review": "Dull"}]
    Path("in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    out = ok(predict(trained, "--input", "in.jsonl", "--text-column", "review")).stdout
    back = [json.loads(line) for line in out.splitlines()]
    expected = _expected(trained, ["A wonderful film", "Dull"])
    for rec, got, ranked in zip(recs, back, expected, strict=True):
        assert got == {**rec, "predicted_label": ranked[0][0],
                       "predicted_probability": pytest.approx(ranked[0][1], abs=1e-12)}
    one_line_error(predict(trained, "--input", "in.jsonl"), 2, "in.jsonl line 1", "'text'")
    one_line_error(predict(trained, "--input", "in.jsonl", "--text-column", "review", "--json"),
                   2, "--json")


def test_a_steady_trickle_is_answered_without_waiting_for_a_full_batch():
    """Lines every 5 ms never leave 20 ms of silence: the oldest line still goes out after MAX_WAIT."""
    read_fd, write_fd = os.pipe()
    written = []

    def trickle():
        for i in range(400):
            os.write(write_fd, f"{i}\n".encode())
            written.append(i)
            threading.Event().wait(0.005)
        os.close(write_fd)

    threading.Thread(target=trickle, daemon=True).start()
    with os.fdopen(read_fd, "rb") as fh:
        batches = stream.micro_batches(fh, 8192)
        first = next(batches)
        assert len(written) < 400, "the first batch waited for the writer to finish"
        rest = [line for batch in batches for line in batch]
    assert [int(x) for x in first + rest] == list(range(400))


def test_a_byte_order_mark_is_not_text():
    lines = [x for b in stream.micro_batches(io.BytesIO(b"\xef\xbb\xbfgreat movie\n\xef\xbb\xbfx\n"), 8)
             for x in b]
    assert lines == ["great movie", "\ufeffx"]  # the file's first bytes only
    # nor at the start of a later read: a line that begins one keeps its bytes
    bom = b"\xef\xbb\xbf"
    data = b"a" * (stream.CHUNK - 1) + b"\n" + bom + b"kept\n" + b"b" * stream.CHUNK + b"\n" + bom + b"z\n"
    lines = [x for b in stream.micro_batches(io.BytesIO(data), 8) for x in b]
    assert lines[1:] == ["\ufeffkept", "b" * stream.CHUNK, "\ufeffz"]


def test_blank_named_columns_and_upper_case_suffixes_come_back_whole(trained):
    Path("IN.CSV").write_text("text,label,,\nawful,neg,a,b\ngreat,pos,c,d\n", encoding="utf-8")
    out = ok(predict(trained, "--input", "IN.CSV")).stdout
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["text", "label", "", "", "predicted_label", "predicted_probability"]
    assert [r[:4] for r in rows[1:]] == [["awful", "neg", "a", "b"], ["great", "pos", "c", "d"]]
    assert ok(predict(trained, "-o", "-", "x")).stdout.count("\n") == 1  # -o -: stdout


def test_odd_checkpoint_names(trained, monkeypatch):
    root = Path.cwd()
    monkeypatch.chdir(trained / "best")
    ok(run("predict", "-c", ".", "a text"))
    monkeypatch.chdir(root)
    one_line_error(run("predict", "-c", "/", "x"), 2, "not an lstmcli checkpoint")
    Path("lastonly/last").mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (Path("lastonly/last") / name).write_bytes((trained / "last" / name).read_bytes())
    one_line_error(run("predict", "-c", "lastonly", "x"), 2, "run folder without best/", "lastonly/last")
