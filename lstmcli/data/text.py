"""Text to ids: torchtext's ``basic_english`` tokenizer and a frequency-ordered vocabulary.

The tokenizer reproduces ``torchtext.data.get_tokenizer("basic_english")`` token for token. Every
rule of torchtext's table substitutes a literal string, so we apply the same rules in the same order
with ``str.replace`` (a memchr-speed scan) instead of ``re.sub``, which is faster
(benchmarks/bench_encode.py; benchmarks/RESULTS.md, "Design choices").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import repeat

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

# torchtext's table, applied in this order after lower-casing (kept for reference and for tests).
BASIC_ENGLISH_RULES: tuple[tuple[str, str], ...] = (
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "),
    (r"\(", " ( "), (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "),
    (r"\:", " "), (r"\s+", " "),
)


def basic_english_regex(line: str) -> list[str]:
    """torchtext 0.18's `_basic_english_normalize`, verbatim: twelve `re.sub` passes. The reference
    that `basic_english` must equal (tests) and beat (benchmarks/bench_encode.py); not used otherwise."""
    line = line.lower()
    for pattern, repl in BASIC_ENGLISH_RULES:
        line = re.sub(pattern, repl, line)
    return line.split()


# The same rules as literal (old, new) pairs, same order; `\s+` -> " " is left to str.split(), which
# splits on exactly the characters that `re`'s `\s` matches.
_LITERAL_RULES: tuple[tuple[str, str], ...] = (
    ("'", " '  "), ('"', ""), (".", " . "), ("<br />", " "), (",", " , "), ("(", " ( "),
    (")", " ) "), ("!", " ! "), ("?", " ? "), (";", " "), (":", " "),
)


def literal_rules() -> list[list[str]]:
    """basic_english after lower-casing, for other programs: replace each [old, new] in order, then split
    on whitespace (what an exported model's JSON carries)."""
    return [list(rule) for rule in _LITERAL_RULES]


def basic_english(text: str) -> list[str]:
    """Tokens of `text`, identical to torchtext's basic_english: lower-case, substitute, split.

    Order matters: `"` is deleted before `<br />` is replaced, so `<br "/>` is a break too, while
    `;` and `:` become spaces after it, so `<br;/>` is not.
    """
    text = text.lower()
    for old, new in _LITERAL_RULES:
        text = text.replace(old, new)
    return text.split()


class Vocab:
    """Token <-> id map: `<pad>`=0, `<unk>`=1, then tokens by descending count, ties by token."""

    def __init__(self, itos: list[str]):
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary must start with {PAD!r}, {UNK!r}")
        if len(set(itos)) != len(itos):
            raise ValueError("a vocabulary must not repeat a token")
        self.itos = itos
        self.stoi = {tok: i for i, tok in enumerate(itos)}
        # A literal "<pad>" in a text is an unknown word, never padding.
        self._lookup = {**self.stoi, PAD: UNK_ID}

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], max_size: int = 0, min_freq: int = 1) -> Vocab:
        """Vocabulary of the tokens seen at least `min_freq` times; `max_size` (0 = no limit) counts
        the two specials too."""
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        return cls.from_counts(counts, max_size, min_freq)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], max_size: int = 0, min_freq: int = 1) -> Vocab:
        """As `build`, from token counts. The specials are never counted as tokens."""
        kept = (item for item in counts.items() if item[1] >= min_freq and item[0] not in (PAD, UNK))
        ranked = sorted(kept, key=lambda item: (-item[1], item[0]))
        if max_size:
            ranked = ranked[: max(max_size - 2, 0)]
        return cls([PAD, UNK] + [tok for tok, _ in ranked])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, tokens: list[str]) -> list[int]:
        """Ids of `tokens`, unknown ones as `<unk>`; an empty list becomes `[<unk>]` so that every
        text has at least one position for the encoder to read."""
        if not tokens:
            return [UNK_ID]
        return list(map(self._lookup.get, tokens, repeat(UNK_ID)))

    def to_json(self) -> str:
        return json.dumps({"itos": self.itos}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("itos"), list):
            raise ValueError("expected an object with an 'itos' list")
        return cls([str(tok) for tok in data["itos"]])
