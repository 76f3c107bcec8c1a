"""Batched streaming generation over independent slots."""

from dsm.engine.generator import LMGen, StepOutput

__all__ = ["LMGen", "StepOutput"]
