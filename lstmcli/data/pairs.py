"""A multi-label dataset made from real single-label text: AG_NEWS articles, alone or joined in pairs.

No multi-label corpus lies in lstmcli's download list, so `ag_news_pairs` derives one, deterministically,
from AG_NEWS's test file (the file every mirror has; 7,600 articles in 4 balanced topics):
1. the articles are shuffled with a fixed seed (PAIRS_SEED) and dealt into train / val / test by
   SHARES, so that no article is seen in two splits;
2. within each split, in that order, each text is either the next article alone, or the next two
   joined with a space, with even odds (the same seeded generator decides); a text's labels are the
   union of its articles' topics, so a pair of one topic has one label and the rest two.
About half the texts are single articles and three in eight have two labels. The recipe is versioned
(RECIPE): a change to it changes the dataset's fingerprint, so no token cache outlives it.
"""

from __future__ import annotations

import random

from lstmcli.data.readers import Rows

RECIPE = "pairs-1"
PAIRS_SEED = 20261205
SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}


def deal(n: int, rng: random.Random) -> dict[str, list[int]]:
    """The article indices 0..n-1 shuffled and dealt into the splits by SHARES (test takes the rest)."""
    order = rng.sample(range(n), n)
    n_train, n_val = round(n * SHARES["train"]), round(n * SHARES["val"])
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def pair_up(texts: list[str], labels: list[str], indices: list[int], rng: random.Random) -> Rows:
    """Texts of one article or two (joined with a space), in `indices` order, each labelled with the
    sorted set of its articles' labels (a tuple, which makes the dataset multi-label)."""
    out_texts, out_labels, i = [], [], 0
    while i < len(indices):
        take = 2 if i + 1 < len(indices) and rng.random() < 0.5 else 1
        chosen = indices[i:i + take]
        out_texts.append(" ".join(texts[j] for j in chosen))
        out_labels.append(tuple(sorted({labels[j] for j in chosen})))
        i += take
    return out_texts, out_labels


def ag_news_pairs(rows: Rows) -> dict[str, Rows]:
    """Every split of the derived dataset from AG_NEWS's (texts, labels)."""
    rng = random.Random(PAIRS_SEED)
    dealt = deal(len(rows[0]), rng)
    return {split: pair_up(rows[0], rows[1], dealt[split], rng) for split in SHARES}
