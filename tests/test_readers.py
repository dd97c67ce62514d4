"""data/readers.py: the AG_NEWS CSV, and a user's CSV/TSV/JSONL files with named or numbered columns;
errors name the file and line."""

import json

import pytest

from lstmcli.data.readers import read_ag_csv, read_user_file
from lstmcli.data.registry import AG_NEWS
from lstmcli.errors import DatasetError


def test_ag_csv_reader_joins_title_and_description(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('"3","Wall St. Bears","Reuters - Short-sellers, ""quoted""\\band"\n"1","T","D"\n')
    texts, labels = read_ag_csv(path, list(AG_NEWS.label_names))
    assert texts == ['Wall St. Bears Reuters - Short-sellers, "quoted"\\band', "T D"]
    assert labels == ["Business", "World"]


@pytest.mark.parametrize("bad", ['"3","only two"\n', '"9","a","b"\n', '"x","a","b"\n'])
def test_ag_csv_malformed_row_names_the_line(tmp_path, bad):
    path = tmp_path / "t.csv"
    path.write_text('"1","ok","fine"\n"2","ok","fine"\n' + bad)
    with pytest.raises(DatasetError, match=r"t\.csv line 3: malformed AG_NEWS row"):
        read_ag_csv(path, list(AG_NEWS.label_names))


def test_ag_csv_unclosed_quote_is_a_dataset_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('"1","ok","fine"\n"2","broken\n')
    with pytest.raises(DatasetError, match="line"):
        read_ag_csv(path, list(AG_NEWS.label_names))


def test_user_csv_tsv_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('text,label,extra\n"hello, world",pos,1\nbad day,neg,2\n')
    (tmp_path / "a.tsv").write_text("label\ttext\npos\thello\n")
    records = [json.dumps({"text": "hi", "label": 1}), "", json.dumps({"text": "yo", "label": 0})]
    (tmp_path / "a.jsonl").write_text("\n".join(records) + "\n")
    assert read_user_file(tmp_path / "a.csv", "text", "label") == (["hello, world", "bad day"],
                                                                   ["pos", "neg"])
    assert read_user_file(tmp_path / "a.tsv", "text", "label") == (["hello"], ["pos"])
    assert read_user_file(tmp_path / "a.jsonl", "text", "label") == (["hi", "yo"], ["1", "0"])


def test_user_headerless_columns_joined(tmp_path):
    (tmp_path / "ag.csv").write_text('"2","Title","Body text"\n')
    assert read_user_file(tmp_path / "ag.csv", "1,2", "0") == (["Title Body text"], ["2"])


def test_user_file_errors_name_the_line(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nok,pos\nshort\n")
    with pytest.raises(DatasetError, match=r"a\.csv line 3: 1 fields, header has 2"):
        read_user_file(tmp_path / "a.csv", "text", "label")
    (tmp_path / "b.csv").write_text("body,label\nok,pos\n")
    with pytest.raises(DatasetError, match="no column 'text'"):
        read_user_file(tmp_path / "b.csv", "text", "label")
    (tmp_path / "c.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(DatasetError, match=r"c\.jsonl line 2: invalid JSON"):
        read_user_file(tmp_path / "c.jsonl", "text", "label")
    (tmp_path / "d.csv").write_bytes(b"text,label\n\xff\xfe,pos\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_user_file(tmp_path / "d.csv", "text", "label")
