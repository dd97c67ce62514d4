import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmcli.data.text import PAD, UNK, UNK_ID, Vocab, basic_english
from lstmcli.data.text import basic_english_regex as torchtext_basic_english

CASES = [
    ("Don't stop", ["don", "'", "t", "stop"]),
    ('He said "hi"', ["he", "said", "hi"]),
    ("End. Next", ["end", ".", "next"]),
    ("one<br />two<BR />three", ["one", "two", "three"]),
    ('a<br "/>b', ["a", "b"]),  # the quote goes first, then the break matches
    ("a<br;/>b", ["a<br", "/>b"]),  # ';' becomes a space only after breaks are replaced
    ("a,b (c) d!e?f", ["a", ",", "b", "(", "c", ")", "d", "!", "e", "?", "f"]),
    ("x;y:z", ["x", "y", "z"]),
    ("  tabs\tand\n\nnew  lines\u00a0nbsp\u2003em ", ["tabs", "and", "new", "lines", "nbsp", "em"]),
    ("Wall St. Bears\\band", ["wall", "st", ".", "bears\\band"]),
    ("", []),
    ("...", [".", ".", "."]),
    ("İstanbul ÀÉ", ["i̇stanbul", "àé"]),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_basic_english_cases(text, expected):
    assert basic_english(text) == expected
    assert torchtext_basic_english(text) == expected


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab <br/>'\".,()!?;:\t\n\x0b\x1c\x85\u00a0\u2028Iİ"))
               | st.characters()))
def test_basic_english_equals_torchtext_regexes(text):
    assert basic_english(text) == torchtext_basic_english(text)


def test_vocab_order_specials_and_ties():
    vocab = Vocab.build([["b", "a", "c", "a"], ["c", "d", "b", "a"]])
    # a:3, b:2, c:2, d:1 -> by count, ties by token
    assert vocab.itos == [PAD, UNK, "a", "b", "c", "d"]
    assert vocab.encode(["d", "zzz", "a"]) == [5, UNK_ID, 2]


def test_vocab_limits():
    tokens = [["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 1]
    assert Vocab.build(tokens, max_size=4).itos == [PAD, UNK, "a", "b"]
    assert Vocab.build(tokens, min_freq=3).itos == [PAD, UNK, "a", "b", "c"]
    assert Vocab.build(tokens, max_size=3, min_freq=2).itos == [PAD, UNK, "a"]


def test_vocab_never_counts_specials_and_pad_text_is_unknown():
    vocab = Vocab.build([["<pad>", "<pad>", "<unk>", "x"]])
    assert vocab.itos == [PAD, UNK, "x"]
    assert vocab.encode(["<pad>", "x"]) == [UNK_ID, 2]


def test_vocab_empty_text_is_one_unknown():
    assert Vocab.build([["a"]]).encode([]) == [UNK_ID]


def test_vocab_json_round_trip():
    vocab = Vocab.build([["é", "日本", "a", "a"]])
    again = Vocab.from_json(vocab.to_json())
    assert again == vocab and again.stoi == vocab.stoi


@pytest.mark.parametrize("bad", ['{"itos": ["a", "b"]}', '["<pad>", "<unk>"]',
                                 '{"itos": ["<pad>", "<unk>", "a", "a"]}'])
def test_vocab_json_rejects_malformed(bad):
    with pytest.raises(ValueError):
        Vocab.from_json(bad)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_tokenizer_never_fails(text):
    tokens = basic_english(text)
    assert all(tok and not any(c.isspace() for c in tok) for tok in tokens)
