"""Streaming Ogg/Opus, as used on Kyutai's WebSocket protocol (80 ms frames: 1920 samples at 24 kHz).

Built on `sphn`. The encoder buffers PCM and emits one Ogg page per 40 ms of audio (the stream's
header pages come with the first call); the decoder returns PCM as soon as pages are complete.
Decoded audio lags the input by the Opus pre-skip (6.5 ms, i.e. 156 samples at 24 kHz).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sphn

from dsm.errors import AudioError, InputError

OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)


def _check_rate(sample_rate: int, name: str) -> None:
    if sample_rate not in OPUS_SAMPLE_RATES:
        rates = ", ".join(str(r) for r in OPUS_SAMPLE_RATES)
        raise AudioError(f"{name}: Opus does not support {sample_rate} Hz (use one of {rates})")


def _is_fatal(e: BaseException) -> bool:
    """Interrupts and exits must propagate; anything else from sphn (including a Rust panic) is an error."""
    return isinstance(e, KeyboardInterrupt | SystemExit | GeneratorExit)


class OpusStreamEncoder:
    """Encode float32 PCM chunks into an Ogg/Opus byte stream, incrementally."""

    def __init__(self, sample_rate: int = 24000, name: str = "opus encoder") -> None:
        _check_rate(sample_rate, name)
        self.sample_rate = sample_rate
        self.name = name
        self._writer = sphn.OpusStreamWriter(sample_rate)

    def encode(self, pcm: Any) -> bytes:
        """Append mono PCM (`[N]` or `[1, N]`, any N) and return the Ogg/Opus bytes produced by this call."""
        samples = _as_mono_pcm(pcm)
        try:
            return bytes(self._writer.append_pcm(samples))
        except BaseException as e:
            if _is_fatal(e):
                raise
            raise AudioError(f"{self.name}: Opus encoding failed ({e})") from e


class OpusStreamDecoder:
    """Decode an Ogg/Opus byte stream, chunk by chunk, to float32 mono PCM.

    Malformed data raises `AudioError` and closes the decoder: create a new one for a new stream.
    """

    def __init__(self, sample_rate: int = 24000, name: str = "opus stream") -> None:
        _check_rate(sample_rate, name)
        self.sample_rate = sample_rate
        self.name = name
        self._reader = sphn.OpusStreamReader(sample_rate)
        self._error: str | None = None

    @property
    def closed(self) -> bool:
        """True once the stream turned out to be malformed."""
        return self._error is not None

    def decode(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Append Ogg/Opus bytes (any split) and return the PCM `[N]` they complete (possibly empty)."""
        if self._error is not None:
            raise AudioError(f"{self.name}: decoder is closed after an earlier error ({self._error})")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InputError(f"{self.name}: expected bytes, got {type(data).__name__}")
        try:
            pcm = self._reader.append_bytes(bytes(data))
        except BaseException as e:
            if _is_fatal(e):
                raise
            self._error = str(e) or type(e).__name__
            self._reader = None
            raise AudioError(f"{self.name}: malformed Ogg/Opus data ({self._error})") from e
        if pcm is None:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(pcm, dtype=np.float32).reshape(-1)


def _as_mono_pcm(pcm: Any) -> np.ndarray:
    if hasattr(pcm, "detach"):  # torch.Tensor
        pcm = pcm.detach().cpu().float().numpy()
    arr = np.asarray(pcm)
    if arr.dtype.kind != "f":
        raise InputError(f"expected floating point PCM in [-1, 1], got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InputError(f"expected mono PCM of shape [N] or [1, N], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("PCM to encode contains non-finite samples (NaN or inf)")
    return np.ascontiguousarray(arr, dtype=np.float32)
