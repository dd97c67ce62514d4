"""A user's CSV/TSV/JSONL files read as the user meant (data/readers.py): a byte order mark, duplicate
or misread header rows, null and empty labels, bad UTF-8 on its true line, labels that would break
predict's output, and one-class data are each refused in one line (exit 2) before anything is written,
or, for a BOM, simply read."""

import csv
import io
import json
import random
from pathlib import Path

import pytest

from lstmcli.data.readers import read_user_file

from .conftest import NEG_WORDS, POS_WORDS, TINY, ok, one_line_error, run, sentence

BOM = b"\xef\xbb\xbf"


def corpus(n: int = 40, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (text, label) rows of two classes, alternating, each text a dozen-odd words."""
    rng = random.Random(seed)
    return [(sentence(rng, POS_WORDS), "pos") if i % 2 else (sentence(rng, NEG_WORDS), "neg")
            for i in range(n)]


def delimited(rows, header=("text", "label"), delimiter: str = ",", end: str = "\n",
              quoting: int = csv.QUOTE_MINIMAL) -> bytes:
    """CSV/TSV bytes as csv.writer writes them, lines ended by `end` (with QUOTE_MINIMAL, Python 3.11's
    writer leaves a lone \r unquoted: quote all when a field holds one)."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=end, quoting=quoting)
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(path: Path, *fragments, flags=()):
    """`train` on `path` fails with exit 2 and one stderr line holding every fragment, and leaves the
    working folder byte for byte as it was: no run folder, no token cache."""
    (Path.cwd() / "notes.txt").write_text("the user's own file\n")
    before = snapshot(Path.cwd())
    result = run("train", "--dataset", path, "--config", TINY, "--epochs", 1, *flags)
    one_line_error(result, 2, *fragments)
    assert snapshot(Path.cwd()) == before
    assert not Path("runs").exists()


@pytest.mark.hostile
def test_bom_is_stripped_in_every_format(workdir):
    rows = corpus()
    for name, data in [("a.csv", delimited(rows)), ("a.tsv", delimited(rows, delimiter="\t")),
                       ("a.jsonl", jsonl({"text": t, "label": y} for t, y in rows))]:
        plain, marked = workdir / f"plain-{name}", workdir / f"bom-{name}"
        plain.write_bytes(data)
        marked.write_bytes(BOM + data)
        assert read_user_file(marked, "text", "label") == read_user_file(plain, "text", "label")
    headerless = workdir / "bom-headerless.csv"
    headerless.write_bytes(BOM + delimited([(y, t) for t, y in rows], header=None))
    assert read_user_file(headerless, "1", "0") == read_user_file(workdir / "plain-a.csv", "text", "label")
    # Excel's "CSV UTF-8" file trains (it used to fail with "no column 'text'")
    ok(run("train", "--dataset", workdir / "bom-a.csv", "--config", TINY, "--epochs", 1, "--quiet",
           "--out", "r"))
    assert json.loads(Path("r/metrics.json").read_text())["data"]["labels"] == ["neg", "pos"]


@pytest.mark.hostile
def test_duplicate_column_names_are_refused(workdir):
    path = workdir / "dup.csv"
    path.write_bytes(delimited([(t, t.upper(), y) for t, y in corpus()], header=("text", "text", "label")))
    refused(path, "dup.csv line 1:", "column 'text' twice", "'text,text,label'")
    tsv = workdir / "dup.tsv"
    tsv.write_bytes(BOM + delimited([(y, t, "x") for t, y in corpus()], header=("label", "text", "label"),
                                    delimiter="\t"))
    refused(tsv, "dup.tsv line 1:", "column 'label' twice")


@pytest.mark.hostile
@pytest.mark.parametrize("header, flags", [
    (("text", "label"), ("--text-column", "0", "--label-column", "1")),
    (("Class Index", "Title", "Description"), ("--text-column", "1,2", "--label-column", "0")),  # Kaggle's
])
def test_header_read_with_column_indices_is_refused(workdir, header, flags):
    rows = corpus()
    if len(header) == 3:
        rows = [(str(i % 4 + 1), t, t[::-1]) for i, (t, _) in enumerate(rows)]
    path = workdir / "with-header.csv"
    path.write_bytes(b"\n" + delimited(rows, header=header))  # a blank first line: the header is line 2
    named = ",".join(h for h in header if h != header[int(flags[3])])
    refused(path, "with-header.csv line 2: looks like a header", "name the columns instead",
            f"--text-column {named!r} --label-column {header[int(flags[3])]!r}", "remove the header line",
            flags=flags)


@pytest.mark.hostile
def test_headerless_files_with_indices_still_work(workdir):
    rows = corpus()
    (workdir / "named.csv").write_bytes(delimited(rows))
    (workdir / "bare.csv").write_bytes(delimited([(y, t) for t, y in rows], header=None))
    expected = [t for t, _ in rows], [y for _, y in rows]
    assert read_user_file(workdir / "named.csv", "text", "label") == expected
    assert read_user_file(workdir / "bare.csv", "1", "0") == expected
    # one-word texts are data, not a header, when their labels recur
    words = [(w, "pos" if w in POS_WORDS else "neg") for w in POS_WORDS + NEG_WORDS]
    (workdir / "words.tsv").write_bytes(delimited(words, header=None, delimiter="\t"))
    assert read_user_file(workdir / "words.tsv", "0", "1") == ([w for w, _ in words], [y for _, y in words])
    # AG_NEWS's own headerless layout: numeric labels, several text columns
    ag = [(str(i % 4 + 1), "Title", "Body") for i in range(8)]
    (workdir / "ag.csv").write_bytes(delimited(ag, header=None))
    assert read_user_file(workdir / "ag.csv", "1,2", "0") == (["Title Body"] * 8, [y for y, _, _ in ag])
    ok(run("train", "--dataset", workdir / "bare.csv", "--text-column", 1, "--label-column", 0,
           "--config", TINY, "--epochs", 1, "--quiet", "--out", "r"))


def _jsonl_with(bad: dict) -> bytes:
    """Records of corpus(), blank lines between the first few, and `bad` on line 7."""
    good = [json.dumps({"text": t, "label": y}) for t, y in corpus()]
    return ("\n".join(good[:3]) + "\n\n\n\n" + json.dumps(bad) + "\n" + "\n".join(good[3:]) + "\n").encode()


@pytest.mark.hostile
@pytest.mark.parametrize("bad, fragment", [
    ({"text": "fine", "label": None}, "line 7: label is null (column 'label')"),
    ({"text": "fine", "label": "   "}, "line 7: label is empty"),
    ({"text": None, "label": "pos"}, "line 7: text is null (column 'text')"),
    ({"text": "fine", "label": [["pos", "neg"]]}, "line 7: label is a JSON list"),  # (a list: a set)
    ({"text": "fine", "label": {"name": "pos"}}, "line 7: label is a JSON object"),
])
def test_null_empty_and_structured_labels_are_refused(workdir, bad, fragment):
    path = workdir / "u.jsonl"
    path.write_bytes(_jsonl_with(bad))
    refused(path, f"u.jsonl {fragment}")


@pytest.mark.hostile
@pytest.mark.parametrize("name, delimiter", [("e.csv", ","), ("e.tsv", "\t")])
def test_empty_label_in_a_delimited_file_names_its_line(workdir, name, delimiter):
    rows = corpus()
    rows[2] = ("a review\nover two lines", "neg")  # a quoted field: line numbers and rows part here
    rows[5] = (rows[5][0], " ")
    path = workdir / name
    path.write_bytes(delimited(rows, delimiter=delimiter))
    refused(path, f"{name} line 8: label is empty (column 'label'")


@pytest.mark.hostile
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_bad_utf8_is_reported_on_its_true_line(workdir, suffix):
    rows = [(t * 4, y) for t, y in corpus(200)]  # ~400 bytes a line: decoding runs far ahead of csv
    rows[10] = ("a quoted\nfield\nover three lines", "neg")
    if suffix == ".csv":
        data = BOM + delimited(rows)
    else:
        data = BOM + b"\n\n" + jsonl({"text": t.replace("\n", " "), "label": y} for t, y in rows)
    lines = data.split(b"\n")
    lines[151] = lines[151][:5] + b"\xff" + lines[151][5:]  # line 152
    path = workdir / f"latin{suffix}"
    path.write_bytes(b"\n".join(lines))
    refused(path, f"latin{suffix} line 152: not UTF-8 text", "byte 0xff at byte offset 5 of the line")


@pytest.mark.hostile
@pytest.mark.parametrize("label", ["po\ts", "po\ns", "po\rs", "po\r\ns"])
def test_labels_with_tabs_or_line_breaks_are_refused(workdir, label):
    rows = corpus()
    rows[3] = (rows[3][0], label)
    path = workdir / "odd.csv"
    path.write_bytes(delimited(rows, quoting=csv.QUOTE_ALL))
    refused(path, "odd.csv line 5:", f"label {label!r} holds a tab or line break")
    records = [{"text": t, "label": y} for t, y in rows]
    (workdir / "odd.jsonl").write_bytes(jsonl(records))
    refused(workdir / "odd.jsonl", "odd.jsonl line 4:", f"label {label!r}")


@pytest.mark.hostile
def test_one_class_data_is_refused_before_training(workdir):
    path = workdir / "one.csv"
    path.write_bytes(delimited([(t, "pos") for t, _ in corpus()]))
    refused(path, f"dataset {path}: every training example has the label 'pos'", "at least two labels")
    folder = workdir / "split"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(jsonl({"text": t, "label": 1} for t, _ in corpus()))
    (folder / "test.jsonl").write_bytes(jsonl({"text": t, "label": y} for t, y in corpus()))
    refused(folder, f"dataset {folder}: every training example has the label '1'")


@pytest.mark.hostile
def test_line_ends_and_quoted_line_breaks_read_as_before(workdir):
    """The reader splits lines itself now: \\n, \\r\\n and a lone \\r end a line as they did in text mode,
    and line breaks inside quoted fields stay in the text."""
    rows = corpus(12)
    rows[4] = ("two\r\nlines", "pos")
    rows[7] = ("a lone\rreturn and a\u2028separator", "neg")
    reads = []
    for i, end in enumerate(["\n", "\r\n", "\r"]):
        path = workdir / f"ends{i}.csv"
        path.write_bytes(delimited(rows, end=end, quoting=csv.QUOTE_ALL))
        reads.append(read_user_file(path, "text", "label"))
    assert reads[0] == reads[1] == reads[2] == ([t for t, _ in rows], [y for _, y in rows])


@pytest.mark.hostile
def test_a_csv_field_longer_than_csvs_own_limit_reads(tmp_path):
    """csv refuses fields over 128 KiB unless told otherwise; a long review must read as in JSONL, and
    the process-wide limit must be what it was afterwards."""
    import csv

    from lstmcli.data.readers import read_user_file
    path = tmp_path / "long.csv"
    long_text = "word " * 100_000  # 500 KB in one field
    path.write_text(f"text,label\n\"{long_text}\",pos\nshort,neg\n")
    before = csv.field_size_limit()
    texts, labels = read_user_file(path, "text", "label")
    assert texts == [long_text, "short"] and labels == ["pos", "neg"]
    assert csv.field_size_limit() == before


@pytest.mark.hostile
@pytest.mark.parametrize("line,fragment", [
    ('{"text": "a film", "label": true}', "label True is not a class name"),
    ('{"text": "a film", "label": NaN}', "label nan is not a class name"),
    ('{"text": "a film", "label": 0.5}', "label 0.5 is not a class name"),
    ('{"text": "a film", "label": "pos", "label": "neg"}', "names 'label' twice"),
    ('{"text": ["a", "film"], "label": "pos"}', "text is a JSON list"),
])
def test_jsonl_values_that_are_no_text_or_class(workdir, tmp_path, line, fragment):
    rows = [json.dumps({"text": f"text {i}", "label": ["pos", "neg"][i % 2]}) for i in range(10)]
    rows.insert(4, line)
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(rows) + "\n")
    one_line_error(run("train", "--dataset", path), 2, "line 5", fragment)


def test_header_names_are_stripped(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text, label\ngood film,pos\nbad film,neg\n")
    assert read_user_file(path, "text", "label") == (["good film", "bad film"], ["pos", "neg"])


def test_eval_reads_a_file_with_its_own_column_names(trained):
    rng = random.Random(7)
    rows = [(sentence(rng, POS_WORDS, 12), "pos") for _ in range(6)] + \
           [(sentence(rng, NEG_WORDS, 12), "neg") for _ in range(6)]
    with open("other.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("review", "sentiment"), *rows])
    one_line_error(run("eval", "-c", trained / "best", "--dataset", "other.csv"), 2, "no column 'text'")
    report = json.loads(ok(run("eval", "-c", trained / "best", "--dataset", "other.csv", "--text-column",
                               "review", "--label-column", "sentiment", "--json")).stdout)
    assert report["n"] == 12 and report["split"] == "other"
