"""ModelSpec: everything that defines a TextClassifier, as nanoGPT's GPTConfig defines a GPT, and the
tables of the choices a model has (cells.py holds the cell kinds).

Its field names are ModelConfig's (plus the vocabulary size and the number of classes), so lstmcli builds
one by keyword from a config, and a library user writes `TextClassifier(ModelSpec(vocab_size=..., ...))`.
The config's choices are these tables' keys. This file imports nothing, not even torch: config.py checks
its rules with `model_problem` without paying for torch, so an invalid combination is named by its
config key before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cells import CELLS


@dataclass(frozen=True)
class ImplKind:
    """An implementation of the recurrent encoders."""

    name: str
    about: str  # one line for --help
    precisions: tuple[str, ...]  # what it computes in
    peephole: bool  # runs peephole connections


IMPLS: dict[str, ImplKind] = {i.name: i for i in (
    ImplKind("builtin", "PyTorch's kernels (nn.LSTM, nn.GRU, nn.RNN)", ("fp32", "bf16"), peephole=False),
    ImplKind("scratch", "ours: the equations with hand-written backward passes and C++ time loops",
             ("fp32",), peephole=True),
)}
# fp32, or bf16 autocast (weights, optimizer and loss stay float32); `auto` is resolved before a model is
# built (runtime/plan.py)
PRECISIONS = ("fp32", "bf16")
POOLINGS = ("last", "mean", "max")
PACKS = ("auto", "always", "never")


@dataclass(frozen=True)
class BagKind:
    """A kind of n-gram bag beside the encoder (models/ngrams.py); F = vocab_size + buckets rows."""

    name: str
    about: str  # one line for --help
    module: str  # its class in models/ngrams.py
    own_logits: bool  # gives class logits itself; else a vector that a linear head turns into logits
    # holds per-class counts of the training split, set before training, and reads each training
    # batch's labels to leave each text out of the counts it reads
    counts_training_split: bool
    # float32-sized numbers a training step keeps per token for it: (a constant, a number per class);
    # used by the memory estimate (runtime/memory.py)
    activations_per_token: tuple[int, int]

    def parameter_count(self, features: int, dim: int, classes: int) -> tuple[int, int]:
        """(parameters, persistent buffer elements), its head included: a weight per n-gram and a bias per
        class, or dim-vectors and a linear head; counts (F, C) and their norms (2, C)."""
        params = features + classes if self.own_logits else features * dim + dim * classes + classes
        buffers = features * classes + 2 * classes if self.counts_training_split else 0
        return params, buffers


BAGS: dict[str, BagKind] = {b.name: b for b in (
    # fasttext: its (2T,) int64 n-gram ids; nbsvm: (2T, C) gathered counts, ratios, a mask and a product
    BagKind("fasttext", "mean of learned n-gram vectors, then a linear layer", "FastTextBag",
            own_logits=False, counts_training_split=False, activations_per_token=(2 * 2, 0)),
    BagKind("nbsvm", "each distinct n-gram's Naive Bayes ratio from the training split, times a learned "
            "weight", "NbsvmBag", own_logits=True, counts_training_split=True,
            activations_per_token=(0, 2 * 4)),
)}
CHOICES = {"cell": tuple(CELLS), "impl": tuple(IMPLS), "pooling": POOLINGS, "pack": PACKS,
           "precision": PRECISIONS, "ngram_bag": tuple(BAGS)}


def impls_for(cell: str, peephole: bool, precision: str = "auto") -> list[str]:
    """The implementations that can run this cell (with or without peephole connections) at this
    precision (`auto`: at some precision)."""
    if peephole and not CELLS[cell].peephole:
        return []
    return [name for name, impl in IMPLS.items()
            if (impl.peephole or not peephole) and (precision == "auto" or precision in impl.precisions)]


def model_problem(cell: str, impl: str, peephole: bool, precision: str) -> tuple[str, str] | None:
    """(field, what is wrong) for a combination of fields no model can have, else None. `impl` and
    `precision` may be `auto` (a config's, resolved later)."""
    chosen = list(IMPLS) if impl == "auto" else [impl]
    if peephole and not (CELLS[cell].peephole and any(IMPLS[i].peephole for i in chosen)):
        able = [c for c in CELLS if CELLS[c].peephole]
        with_it = [i for i in IMPLS if IMPLS[i].peephole]
        return "peephole", (f"peephole connections need cell {' or '.join(map(repr, able))} and impl "
                            f"{' or '.join(map(repr, with_it))}")
    if any(i in impls_for(cell, peephole, precision) for i in chosen):
        return None
    runs = [i for i in chosen if i in impls_for(cell, peephole)]  # what runs the model at some precision
    precisions = ", ".join(p for p in PRECISIONS if any(p in IMPLS[i].precisions for i in runs))
    if peephole:
        return "precision", (f"precision {precision!r} cannot run peephole connections (they run in "
                             f"{precisions})")
    able = " or ".join(repr(i) for i in IMPLS if precision in IMPLS[i].precisions)
    return "precision", f"precision {precision!r} needs impl {able} (impl {impl!r} runs in {precisions})"


@dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    num_classes: int
    cell: str = "lstm"  # a key of cells.CELLS
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
    ngram_bag: str = "fasttext"  # which bag: a key of BAGS
    ngram_dim: int = 64  # the fasttext bag's vector size
    pack: str = "auto"
    precision: str = "fp32"
    multi_label: bool = False  # a sigmoid per label (the data's choice: DataConfig.multi_label)

    def __post_init__(self) -> None:
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(valid)}")
        problem = model_problem(self.cell, self.impl, self.peephole, self.precision)
        if problem:
            raise ValueError(problem[1])

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def branches(self) -> list[str]:
        """The model's branches, whose logits add up: the encoder's head, and the n-gram bag's."""
        return ["encoder"] + (["ngram_bag"] if self.ngram_buckets else [])

    def parameter_count(self) -> tuple[int, int]:
        """(parameters, persistent buffer elements) of the TextClassifier built from this spec, counted
        without building it (in constant time, whatever num_layers says)."""
        E, H, D, C = self.embedding_dim, self.hidden_size, self.num_directions, self.num_classes
        rows = CELLS[self.cell].gate_count * H

        def layer(width: int) -> int:  # W_ih, W_hh, two biases (and peepholes) per direction
            return D * (rows * width + rows * H + 2 * rows + (3 * H if self.peephole else 0))
        params = self.vocab_size * E + (H * D) * C + C  # embedding, head
        params += layer(E) + (self.num_layers - 1) * layer(H * D)
        buffers = len(self.branches)  # branch_weights
        if self.ngram_buckets:
            bag_params, bag_buffers = BAGS[self.ngram_bag].parameter_count(
                self.vocab_size + self.ngram_buckets, self.ngram_dim, C)
            if self.multi_label and BAGS[self.ngram_bag].counts_training_split:
                bag_buffers += self.vocab_size + self.ngram_buckets  # NbsvmBag.texts
            params, buffers = params + bag_params, buffers + bag_buffers
        return params, buffers
