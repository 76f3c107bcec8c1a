"""Speech-to-text."""

from dsm.stt.transcriber import Transcriber, Transcript

__all__ = ["Transcriber", "Transcript"]
