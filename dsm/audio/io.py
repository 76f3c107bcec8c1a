"""Reading, writing, encoding and resampling audio.

Samples are float32 in [-1, 1]. Single-channel audio is `[T]`, multi-channel audio is `[C, T]`.
Every failure to read, decode or write audio raises `AudioError` naming the file and the problem.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf
import soxr

from dsm.audio.opus import OPUS_SAMPLE_RATES
from dsm.errors import AudioError, InputError

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_CHANNELS = 16
_FALLBACK_RATE = 48000
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
# A decoded length this much shorter than the header announces means the file was cut.
_TRUNCATION_SLACK = 2304
STREAM_BLOCK_FRAMES = 65536  # frames `stream_audio` decodes at a time (~1.4 s at 48 kHz)


@dataclass(frozen=True)
class _Format:
    sf_format: str
    subtype: str
    rates: tuple[int, ...] | None = None  # sample rates the codec accepts; None means any


_FORMATS: dict[str, _Format] = {
    "wav": _Format("WAV", "PCM_16"),
    "flac": _Format("FLAC", "PCM_16"),
    "ogg": _Format("OGG", "VORBIS"),
    "opus": _Format("OGG", "OPUS", OPUS_SAMPLE_RATES),
    "mp3": _Format("MP3", "MPEG_LAYER_III", MP3_SAMPLE_RATES),
}
WRITE_FORMATS: tuple[str, ...] = tuple(_FORMATS)
ENCODE_FORMATS: tuple[str, ...] = (*_FORMATS, "pcm")
_READABLE = "wav, flac, mp3, ogg/vorbis or ogg/opus"


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file announces about itself (without decoding it)."""

    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class _Source:
    name: str
    target: str | io.BytesIO  # a path for soundfile, or the bytes in memory

    def head(self, size: int) -> bytes:
        if isinstance(self.target, io.BytesIO):
            return self.target.getbuffer()[:size].tobytes()
        with open(self.target, "rb") as f:
            return f.read(size)


# --- reading ---


def read_audio(
    source: AudioSource, sample_rate: int | None = 24000, mono: bool = True, *, name: str | None = None
) -> np.ndarray:
    """Decode `source` (path, bytes or binary file object) to float32 `[T]` (mono) or `[C, T]`.

    The audio is resampled to `sample_rate` unless it is None. `name` labels bytes/streams in errors.
    """
    return read_audio_with_rate(source, sample_rate, mono, name=name)[0]


def read_audio_with_rate(
    source: AudioSource, sample_rate: int | None = 24000, mono: bool = True, *, name: str | None = None
) -> tuple[np.ndarray, int]:
    """Like `read_audio`, also returning the sample rate of the returned samples."""
    src = _resolve_source(source, name)
    wav, rate = _decode(src)
    if mono:
        wav = wav.mean(axis=0, dtype=np.float32)
    if sample_rate is not None and sample_rate != rate:
        wav = resample(wav, rate, sample_rate)
        rate = sample_rate
    return wav, rate


def stream_audio(
    source: AudioSource,
    sample_rate: int | None = 24000,
    *,
    block_frames: int = STREAM_BLOCK_FRAMES,
    name: str | None = None,
) -> AudioStream:
    """Decode `source` block by block to float32 mono `[n]` arrays, resampled to `sample_rate` (None: native).

    Memory stays constant whatever the length of a file. The blocks, concatenated, equal
    `read_audio(source, sample_rate)` (MP3s to ~1e-7: libmpg123 rounds by read size), and fail with the
    same `AudioError`s: the file is opened and its first block decoded here, so missing, unreadable, empty
    and corrupt files fail at once; later corruption, non-finite samples and truncation fail when reached.
    Close the stream (or use it as a context manager) if you do not read it to the end.
    """
    if isinstance(block_frames, bool) or not isinstance(block_frames, int) or block_frames <= 0:
        raise InputError(f"block_frames must be a positive integer, got {block_frames!r}")
    src = _resolve_source(source, name)
    try:
        file = sf.SoundFile(src.target)
    except Exception as e:
        raise AudioError(f"{src.name}: {_explain(e)}") from e
    try:
        return AudioStream(src, file, sample_rate, block_frames)
    except BaseException:
        file.close()
        raise


class AudioStream(Iterator[np.ndarray]):
    """An open audio file yielding float32 mono blocks (see `stream_audio`)."""

    def __init__(self, src: _Source, file: sf.SoundFile, sample_rate: int | None, block_frames: int) -> None:
        self.name = src.name
        self.source_rate: int = file.samplerate
        self.sample_rate: int = file.samplerate if sample_rate is None else sample_rate
        self.frames: int = file.frames  # as announced by the header, at `source_rate`
        self._src, self._file, self._fmt, self._block = src, file, file.format, block_frames
        self._decoded = 0
        self._resampler = None
        if self.sample_rate != self.source_rate:
            _check_rates(self.source_rate, self.sample_rate)
            self._resampler = soxr.ResampleStream(self.source_rate, self.sample_rate, 1, "float32", "HQ")
        self._first: np.ndarray | None = self._read()
        if self._first is None:
            raise AudioError(f"{self.name}: contains no audio samples (the file may be truncated or corrupt)")

    @property
    def duration(self) -> float:
        """Seconds announced by the header (MP3s without a Xing/Info tag only estimate it)."""
        return self.frames / self.source_rate

    def _read(self) -> np.ndarray | None:
        """The next block at the source rate, or None at the end of the file (after the checks)."""
        try:
            data = self._file.read(self._block, dtype="float32", always_2d=True)
        except Exception as e:
            raise AudioError(f"{self.name}: {_explain(e)}") from e
        if len(data) == 0:
            _check_length(self._src, self._fmt, self.frames, self._decoded, self.source_rate)
            return None
        self._decoded += len(data)
        if not np.isfinite(data).all():
            raise AudioError(f"{self.name}: contains non-finite samples (NaN or inf)")
        return np.ascontiguousarray(data.T).mean(axis=0, dtype=np.float32)

    def __next__(self) -> np.ndarray:
        if self._file.closed:
            raise StopIteration
        try:
            block = self._read() if self._first is None else self._first
        except BaseException:
            self.close()
            raise
        self._first = None
        if block is not None:
            return block if self._resampler is None else self._resampler.resample_chunk(block)
        self.close()
        if self._resampler is None:
            raise StopIteration
        return self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)  # the resampler's tail

    def close(self) -> None:
        """Release the file (reading stops)."""
        self._file.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def audio_info(source: AudioSource, *, name: str | None = None) -> AudioInfo:
    """Sample rate, channels, length and format announced by an audio file's header."""
    src = _resolve_source(source, name)
    try:
        info = sf.info(src.target)
    except Exception as e:
        raise AudioError(f"{src.name}: {_explain(e)}") from e
    return AudioInfo(info.samplerate, info.channels, info.frames, info.format, info.subtype)


def _resolve_source(source: AudioSource, name: str | None) -> _Source:
    if isinstance(source, str | os.PathLike):
        return _path_source(Path(source), name)
    if isinstance(source, bytes | bytearray | memoryview):
        return _bytes_source(bytes(source), name or "<bytes>")
    if hasattr(source, "read"):
        label = name or _stream_name(source)
        try:
            data = source.read()
        except OSError as e:
            raise AudioError(f"{label}: cannot read stream ({e})") from e
        if not isinstance(data, bytes | bytearray):
            raise InputError(f"{label}: expected a binary stream (e.g. sys.stdin.buffer), got text")
        return _bytes_source(bytes(data), label)
    raise InputError(f"cannot read audio from a {type(source).__name__}; pass a path, bytes or a binary file")


def _stream_name(stream: Any) -> str:
    label = getattr(stream, "name", None)
    return label if isinstance(label, str) else "<stream>"


def _path_source(path: Path, name: str | None) -> _Source:
    label = name or str(path)
    if not path.exists():
        raise AudioError(f"{label}: file not found")
    if path.is_dir():
        raise AudioError(f"{label}: is a directory, not an audio file")
    try:
        if not path.is_file():  # a pipe or device (/dev/stdin, <(ffmpeg ...)): read it all
            return _bytes_source(path.read_bytes(), label)
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as e:
        raise AudioError(f"{label}: cannot open file ({e.strerror or e})") from e
    if size == 0:
        raise AudioError(f"{label}: file is empty (0 bytes)")
    return _Source(label, str(path))


def _bytes_source(data: bytes, name: str) -> _Source:
    if not data:
        raise AudioError(f"{name}: file is empty (0 bytes)")
    return _Source(name, io.BytesIO(data))


def _decode(src: _Source) -> tuple[np.ndarray, int]:
    """Decode all of `src` to float32 `[C, T]`, rejecting truncated, empty and non-finite audio."""
    try:
        with sf.SoundFile(src.target) as f:
            announced, rate, fmt = f.frames, f.samplerate, f.format
            data = f.read(dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{src.name}: {_explain(e)}") from e
    decoded = data.shape[0]
    if decoded == 0:
        raise AudioError(f"{src.name}: contains no audio samples (the file may be truncated or corrupt)")
    _check_length(src, fmt, announced, decoded, rate)
    if not np.isfinite(data).all():
        raise AudioError(f"{src.name}: contains non-finite samples (NaN or inf)")
    return np.ascontiguousarray(data.T), rate


def _check_length(src: _Source, fmt: str, announced: int, decoded: int, rate: int) -> None:
    """Raise if clearly fewer frames were decoded than the header announces (a cut file)."""
    if announced - decoded > max(_TRUNCATION_SLACK, announced // 100) and _length_is_exact(src, fmt):
        raise AudioError(
            f"{src.name}: file is truncated (its header announces {announced / rate:.2f} s "
            f"but only {decoded / rate:.2f} s could be decoded)"
        )


def _length_is_exact(src: _Source, fmt: str) -> bool:
    """Whether the announced length is exact: MP3s only know it from a Xing/Info tag, else it is a guess."""
    if fmt != "MP3":
        return True
    head = src.head(10)
    skip = 0
    if head[:3] == b"ID3" and len(head) == 10:  # ID3v2 tag: 10-byte header + syncsafe size (+ footer)
        skip = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
        skip += 10 if head[5] & 0x10 else 0
    first_frame = src.head(skip + 256)[skip:]
    return b"Xing" in first_frame or b"Info" in first_frame


_HINTS = (
    ("format not recognised", f"not a recognised audio format (expected {_READABLE})"),
    ("malformed", "the file is malformed or truncated"),
    ("unimplemented format", "uses an audio encoding that is not supported"),
    ("not a regular file", "could not decode the audio (the data is truncated, corrupt or not audio)"),
    ("lost sync", "could not decode the audio (the file is truncated or corrupt)"),
)


def _explain(e: Exception) -> str:
    """A human explanation of a soundfile/libsndfile failure."""
    detail = (getattr(e, "error_string", None) or str(e)).strip()
    detail = detail.removeprefix("Error :").strip().rstrip(".")
    lowered = detail.lower()
    for needle, hint in _HINTS:
        if needle in lowered:
            return hint
    return f"could not decode the audio ({detail})"


# --- resampling ---


def resample(wav: np.ndarray, from_rate: int, to_rate: int, quality: str = "HQ") -> np.ndarray:
    """Resample float32 `[T]` or `[C, T]` audio with soxr; returns the input (as float32) if rates match."""
    _check_rates(from_rate, to_rate)
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim not in (1, 2):
        raise InputError(f"expected audio of shape [T] or [C, T], got {tuple(wav.shape)}")
    if from_rate == to_rate:
        return wav
    out = soxr.resample(np.ascontiguousarray(wav.T), int(from_rate), int(to_rate), quality)
    return np.ascontiguousarray(out.T, dtype=np.float32)


def _check_rates(from_rate: Any, to_rate: Any) -> None:
    for rate in (from_rate, to_rate):
        if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
            raise InputError(f"sample rates must be positive integers, got {from_rate} -> {to_rate}")


# --- writing ---


def write_audio(
    path: str | os.PathLike, wav: Any, sample_rate: int = 24000, *, subtype: str | None = None
) -> None:
    """Write `[T]`, `[C, T]` or `[1, C, T]` audio (numpy or torch) to `path`, format from the extension.

    Supported extensions: .wav (PCM_16 unless `subtype`, e.g. "FLOAT"), .flac, .ogg (Vorbis),
    .opus (Ogg/Opus) and .mp3. Rates a codec cannot store are resampled to 48 kHz.
    """
    path = Path(path)
    fmt_name = path.suffix.lower().lstrip(".")
    if fmt_name not in _FORMATS:
        supported = ", ".join(f".{f}" for f in WRITE_FORMATS)
        raise AudioError(f"{path}: unknown audio extension '{path.suffix}' (supported: {supported})")
    parent = path.parent
    if not parent.is_dir():
        raise AudioError(f"{path}: cannot write, directory '{parent}' does not exist")
    if path.is_dir():
        raise AudioError(f"{path}: cannot write, it is a directory")
    _write(str(path), str(path), as_channels_first(wav), sample_rate, fmt_name, subtype)


def encode_audio(
    wav: Any, sample_rate: int = 24000, format: str = "wav", *, subtype: str | None = None
) -> bytes:
    """Encode audio in memory as wav, flac, ogg (Vorbis), opus (Ogg/Opus), mp3, or pcm (raw s16le)."""
    fmt_name = format.lower().lstrip(".")
    data = as_channels_first(wav)
    if fmt_name == "pcm":
        return _to_pcm16(data)
    if fmt_name not in _FORMATS:
        raise AudioError(f"<{format}>: unknown audio format (supported: {', '.join(ENCODE_FORMATS)})")
    buffer = io.BytesIO()
    _write(buffer, f"<{fmt_name} encoder>", data, sample_rate, fmt_name, subtype)
    return buffer.getvalue()


def as_channels_first(wav: Any) -> np.ndarray:
    """Convert numpy/torch audio of shape `[T]`, `[C, T]` or `[1, C, T]` to float32 `[C, T]`."""
    if hasattr(wav, "detach"):  # torch.Tensor, without importing torch
        wav = wav.detach().cpu().float().numpy()
    arr = np.asarray(wav)
    if arr.dtype.kind != "f":
        raise InputError(f"expected floating point samples in [-1, 1], got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise InputError(f"expected audio of shape [T], [C, T] or [1, C, T], got {tuple(np.shape(wav))}")
    if arr.shape[0] > MAX_CHANNELS:
        raise InputError(
            f"expected audio of shape [C, T] with at most {MAX_CHANNELS} channels, got {arr.shape} "
            "(is it [T, C]? transpose it)"
        )
    if not np.isfinite(arr).all():
        raise InputError("audio to write contains non-finite samples (NaN or inf)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _write(
    target: str | io.BytesIO, name: str, data: np.ndarray, rate: int, fmt_name: str, subtype: str | None
) -> None:
    fmt = _FORMATS[fmt_name]
    subtype = (subtype or fmt.subtype).upper()
    if not sf.check_format(fmt.sf_format, subtype):
        choices = ", ".join(sf.available_subtypes(fmt.sf_format))
        raise AudioError(f"{name}: subtype '{subtype}' is not valid for {fmt_name} (choose from {choices})")
    if fmt.rates is not None and rate not in fmt.rates:
        data, rate = resample(data, rate, _FALLBACK_RATE), _FALLBACK_RATE
    if subtype not in _FLOAT_SUBTYPES:
        data = np.clip(data, -1.0, 1.0)
    try:
        sf.write(target, data.T, rate, format=fmt.sf_format, subtype=subtype)
    except Exception as e:
        detail = (getattr(e, "error_string", None) or str(e)).strip()
        raise AudioError(f"{name}: cannot write {fmt_name} audio ({detail})") from e


def _to_pcm16(data: np.ndarray) -> bytes:
    """Interleaved little-endian signed 16-bit PCM."""
    ints = np.round(np.clip(data, -1.0, 1.0) * 32767.0).astype("<i2")
    return ints.T.tobytes()
