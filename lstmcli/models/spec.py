"""ModelSpec: everything that defines a TextClassifier, as nanoGPT's GPTConfig defines a GPT.

Its field names are ModelConfig's (plus the vocabulary size and the number of classes), so lstmcli builds
one by keyword from a config, and a library user writes `TextClassifier(ModelSpec(vocab_size=..., ...))`.
This file imports nothing, not even torch: config.py checks its rules with `model_problem` without
paying for torch, so an invalid combination is named by its config key before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass

ENCODERS = ("lstm", "gru", "rnn")  # the recurrent cell
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight rows per unit of state, as nn.LSTM / nn.GRU / nn.RNN
IMPLS = ("builtin", "scratch")  # PyTorch's kernels, or ours (a config's `auto` is resolved to one)
POOLINGS = ("last", "mean", "max")
PACKS = ("auto", "always", "never")
PRECISIONS = ("fp32", "bf16")  # what runs; `auto` is resolved before a model is built
NGRAM_BAGS = ("fasttext", "nbsvm")  # models/ngrams.py: NgramBag, NbBag
CHOICES = {"encoder": ENCODERS, "impl": IMPLS, "pooling": POOLINGS, "pack": PACKS, "precision": PRECISIONS,
           "ngram_bag": NGRAM_BAGS}


def model_problem(encoder: str, impl: str, peephole: bool, precision: str) -> tuple[str, str] | None:
    """(field, what is wrong) for a combination of fields no model can have, else None. A config's impl
    `auto` becomes scratch for peephole connections and builtin for bf16."""
    if peephole and (encoder != "lstm" or impl == "builtin"):
        return "peephole", "peephole connections need encoder 'lstm' and impl 'scratch'"
    if precision == "bf16" and (impl == "scratch" or peephole):
        return "precision", "precision 'bf16' needs impl 'builtin' (the scratch kernels are float32/float64)"
    return None


@dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    num_classes: int
    encoder: str = "lstm"
    impl: str = "builtin"
    peephole: bool = False
    embedding_dim: int = 128
    hidden_size: int = 128  # per direction
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0  # between stacked layers and before the output layer
    embedding_dropout: float = 0.0
    recurrent_dropout: float = 0.0  # AWD-LSTM's DropConnect on every weight_hh
    pooling: str = "last"
    ngram_buckets: int = 0  # hashed word-bigram buckets of the n-gram bag beside the encoder (0 = no bag)
    ngram_bag: str = "fasttext"  # which bag (models/ngrams.py)
    ngram_dim: int = 64  # the fasttext bag's vector size
    pack: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(valid)}")
        problem = model_problem(self.encoder, self.impl, self.peephole, self.precision)
        if problem:
            raise ValueError(problem[1])

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def parameter_count(self) -> tuple[int, int]:
        """(parameters, persistent buffer elements) of the TextClassifier built from this spec, counted
        without building it (in constant time, whatever num_layers says)."""
        E, H, D, C = self.embedding_dim, self.hidden_size, self.num_directions, self.num_classes
        rows = GATES[self.encoder] * H

        def layer(width: int) -> int:  # W_ih, W_hh, two biases (and peepholes) per direction
            return D * (rows * width + rows * H + 2 * rows + (3 * H if self.peephole else 0))
        params = self.vocab_size * E + (H * D) * C + C  # embedding, head
        params += layer(E) + (self.num_layers - 1) * layer(H * D)
        buffers = 2 if self.ngram_buckets else 1  # branch_scale
        features = self.vocab_size + self.ngram_buckets
        if self.ngram_buckets and self.ngram_bag == "nbsvm":
            params += features + C  # a weight per n-gram, a bias per class
            buffers += features * C + 2 * C  # counts, norms
        elif self.ngram_buckets:
            params += features * self.ngram_dim + self.ngram_dim * C + C
        return params, buffers
