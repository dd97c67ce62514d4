"""Pretrained word vectors (GloVe or word2vec text format) for the embedding layer.

A line is a token and its numbers, space-separated; a word2vec file starts with a "count dim" line.
Only the vectors of tokens in the vocabulary are kept, so a multi-GB file costs one pass, not memory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lstmcli.data.text import Vocab
from lstmcli.errors import LstmcliError


def load_vectors(path: str | Path, vocab: Vocab, dim: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids, vectors (n, dim), lines read) for the vocabulary tokens that `path` has a vector for."""
    path = Path(path)
    ids: list[int] = []
    rows: list[list[float]] = []
    seen: set[int] = set()  # a token listed twice keeps its first vector
    lines = 0
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                parts = line.rstrip("\n").rstrip(" ").split(" ")
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec header: "count dim"
                if len(parts) != dim + 1:
                    raise LstmcliError(f"{path} line {number}: {len(parts) - 1} numbers, but --embedding-dim "
                                       f"is {dim} (a line is a token and its {dim} numbers)")
                lines += 1
                token_id = vocab.stoi.get(parts[0])
                if token_id is not None and token_id > 1 and token_id not in seen:
                    try:
                        rows.append([float(v) for v in parts[1:]])
                    except ValueError:
                        raise LstmcliError(f"{path} line {number}: not a number in the vector of "
                                           f"{parts[0]!r}") from None
                    ids.append(token_id)
                    seen.add(token_id)
    except FileNotFoundError:
        raise LstmcliError(f"embeddings file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise LstmcliError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return torch.tensor(ids, dtype=torch.long), torch.tensor(rows, dtype=torch.float32).view(-1, dim), lines


def init_embeddings(embedding: torch.nn.Embedding, path: str | Path, vocab: Vocab) -> dict:
    """Copy the vectors of known tokens into `embedding`; returns the coverage report."""
    ids, vectors, lines = load_vectors(path, vocab, embedding.embedding_dim)
    with torch.no_grad():
        embedding.weight[ids.to(embedding.weight.device)] = vectors.to(embedding.weight.device)
    known = len(vocab) - 2
    return {"path": str(path), "vectors_read": lines, "found": len(ids), "vocab": known,
            "coverage": len(ids) / known if known else 0.0}
