"""Text-to-speech (Kyutai TTS): script parsing, word scheduling, voices and the synthesizer."""

from dsm.tts.synthesizer import AudioChunk, Synthesis, Synthesizer, TtsStream, WordTiming

__all__ = ["AudioChunk", "Synthesis", "Synthesizer", "TtsStream", "WordTiming"]
