"""The DSM language model: config, network, checkpoint loading and conditioning."""

from dsm.lm.config import LMConfig
from dsm.lm.loader import build_lm, load_lm, read_config
from dsm.lm.model import UNGENERATED_TOKEN, ZERO_TOKEN, LMModel, LMOutput

__all__ = [
    "UNGENERATED_TOKEN",
    "ZERO_TOKEN",
    "LMConfig",
    "LMModel",
    "LMOutput",
    "build_lm",
    "load_lm",
    "read_config",
]
