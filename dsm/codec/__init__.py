"""Mimi, Kyutai's streaming neural audio codec."""

from dsm.codec.loader import load_mimi, save_mimi
from dsm.codec.mimi import Mimi, MimiConfig, MimiStreamingDecoder, MimiStreamingEncoder

__all__ = ["Mimi", "MimiConfig", "MimiStreamingDecoder", "MimiStreamingEncoder", "load_mimi", "save_mimi"]
