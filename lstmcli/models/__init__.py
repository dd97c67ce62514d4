"""Models: torch only, no I/O."""

from .classifier import TextClassifier, build_encoder, ENCODER_IMPLS

__all__ = ["TextClassifier", "build_encoder", "ENCODER_IMPLS"]
