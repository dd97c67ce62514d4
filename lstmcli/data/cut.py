"""How texts are cut to a number of tokens (Truncation), apart from the batching that applies it, so
that the command line can cut texts for onnxruntime without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from lstmcli.config import DataConfig, Truncate

DEFAULT_MAX_LENGTH = DataConfig().max_length  # the config default: for checkpoints trained with no cut


@dataclass(frozen=True)
class Truncation:
    """How long texts are cut: keep `length` tokens (0 = all), the first ones (`head`), or the first
    and last halves (`head_tail`: a review's verdict is often in its closing lines)."""

    length: int = 0
    keep: Truncate = Truncate.head

    @classmethod
    def of(cls, cfg: DataConfig) -> Truncation:
        """The cut a run trains with (max_length 0: none)."""
        return cls(cfg.max_length, cfg.truncate)

    @classmethod
    def for_inference(cls, cfg: DataConfig, max_length: int | None = None) -> Truncation:
        """The cut eval, calibrate, predict and an exported model apply: `max_length` when given, else the
        training cut, else DEFAULT_MAX_LENGTH tokens, so that a runaway input (a 10 MB line) costs
        milliseconds and megabytes, not minutes and gigabytes, even with a checkpoint trained uncut."""
        return cls(max_length or cfg.max_length or DEFAULT_MAX_LENGTH, cfg.truncate)

    @property
    def head(self) -> int:
        """How many leading tokens a cut text keeps (all `length` of them for `head`)."""
        return (self.length + 1) // 2 if self.keep is Truncate.head_tail else self.length

    def apply(self, tokens: list) -> list:
        """`tokens` cut as `collate` cuts an encoded text."""
        if not self.length or len(tokens) <= self.length:
            return tokens
        return tokens[: self.head] + tokens[len(tokens) - (self.length - self.head):]
