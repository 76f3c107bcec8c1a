"""dsm: Delayed Streams Modeling (Kyutai-compatible streaming STT and TTS) in PyTorch."""

from dsm.errors import AudioError, CheckpointError, DsmError, InputError

__version__ = "0.1.0"

__all__ = ["AudioError", "CheckpointError", "DsmError", "InputError", "__version__"]
