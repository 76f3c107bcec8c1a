"""Tests for dsm.audio: file/bytes I/O, resampling, error reporting and streaming Opus."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dsm.audio import (
    OpusStreamDecoder,
    OpusStreamEncoder,
    audio_info,
    encode_audio,
    read_audio,
    read_audio_with_rate,
    resample,
    stream_audio,
    write_audio,
)
from dsm.errors import AudioError, InputError

SR = 24000
FRAME = 1920  # 80 ms at 24 kHz


def sine(freq: float = 440.0, seconds: float = 1.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speech_like(seconds: float = 1.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Low-passed noise with a 4 Hz syllabic envelope."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    noise = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * np.arange(n) / sr))
    return (0.15 * envelope * noise / noise.std()).astype(np.float32)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def peak_frequency(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[np.argmax(spectrum)])


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - test) ** 2)))


def best_lag(ref: np.ndarray, test: np.ndarray, max_lag: int) -> int:
    """The delay of `test` relative to `ref` that maximises their cross-correlation."""
    n = len(ref) - max_lag
    return max(range(max_lag), key=lambda d: float(np.dot(test[d : d + n], ref[:n])))


def assert_names(err: pytest.ExceptionInfo, name: str | Path) -> None:
    assert str(name) in str(err.value), f"message {str(err.value)!r} does not name {name}"


# --- round trips ---


def test_wav_float_round_trip_is_exact(tmp_path: Path) -> None:
    wav = sine() * np.linspace(0.1, 1.9, SR, dtype=np.float32)  # goes beyond 1: FLOAT must not clip
    path = tmp_path / "float.wav"
    write_audio(path, wav, SR, subtype="FLOAT")
    out, rate = read_audio_with_rate(path, sample_rate=None)
    assert rate == SR
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, wav)


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_pcm16_round_trip_within_one_step(tmp_path: Path, ext: str) -> None:
    wav = sine(amp=0.6) + speech_like() * 0.5
    assert np.abs(wav).max() < 1.0  # no clipping: the error is quantisation only
    path = tmp_path / f"pcm.{ext}"
    write_audio(path, wav, SR)
    assert audio_info(path).subtype == "PCM_16"
    out = read_audio(path)
    assert out.shape == wav.shape
    assert np.abs(out - wav).max() <= 1 / 32767


def test_integer_formats_clip(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    write_audio(path, np.array([2.0, -3.0, 0.25], dtype=np.float32), SR)
    np.testing.assert_allclose(read_audio(path), [32767 / 32768, -1.0, 0.25], atol=1e-6)


@pytest.mark.parametrize("ext, min_corr", [("ogg", 0.99), ("opus", 0.98), ("mp3", 0.99)])
def test_lossy_round_trip(tmp_path: Path, ext: str, min_corr: float) -> None:
    wav = sine(seconds=2.0)
    path = tmp_path / f"lossy.{ext}"
    write_audio(path, wav, SR)
    out, rate = read_audio_with_rate(path, sample_rate=None)
    assert rate == SR
    assert abs(len(out) - len(wav)) <= FRAME
    assert corr(out, wav) > min_corr


def test_mp3_written_by_soundfile(tmp_path: Path) -> None:
    wav = sine(seconds=1.5, sr=44100) + speech_like(1.5, sr=44100) * 0.3
    path = tmp_path / "sf.mp3"
    sf.write(path, wav, 44100, format="MP3")
    out, rate = read_audio_with_rate(path, sample_rate=None)
    assert rate == 44100
    assert abs(len(out) / rate - 1.5) < 0.05
    assert corr(out, wav) > 0.95


def test_opus_write_resamples_unsupported_rate(tmp_path: Path) -> None:
    path = tmp_path / "cd.opus"
    write_audio(path, sine(1000.0, sr=44100), 44100)
    info = audio_info(path)
    assert (info.format, info.subtype, info.sample_rate) == ("OGG", "OPUS", 48000)
    out = read_audio(path, sample_rate=None)
    assert abs(peak_frequency(out, 48000) - 1000.0) < 5.0


def test_stereo_downmix_is_channel_mean(tmp_path: Path) -> None:
    stereo = np.stack([sine(440.0), sine(660.0, amp=0.2)])
    path = tmp_path / "stereo.wav"
    write_audio(path, stereo, SR, subtype="FLOAT")
    both = read_audio(path, mono=False)
    assert both.shape == (2, SR)
    np.testing.assert_array_equal(both, stereo)
    mono = read_audio(path)
    assert mono.shape == (SR,)
    np.testing.assert_allclose(mono, stereo.mean(axis=0), atol=1e-7)


def test_write_accepts_torch_shapes(tmp_path: Path) -> None:
    wav = sine(seconds=0.1)
    for i, tensor in enumerate(
        [torch.from_numpy(wav), torch.from_numpy(wav)[None], torch.from_numpy(wav)[None, None]]
    ):
        path = tmp_path / f"t{i}.wav"
        write_audio(path, tensor.requires_grad_(False), SR, subtype="FLOAT")
        np.testing.assert_array_equal(read_audio(path), wav)


def test_write_rejects_time_major_and_integer_arrays(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\[T, C\]"):
        write_audio(tmp_path / "x.wav", np.zeros((SR, 2), dtype=np.float32), SR)
    with pytest.raises(InputError, match="dtype"):
        write_audio(tmp_path / "x.wav", np.zeros(SR, dtype=np.int16), SR)
    with pytest.raises(InputError, match="non-finite"):
        write_audio(tmp_path / "x.wav", np.array([0.0, np.nan], dtype=np.float32), SR)


# --- resampling ---


def test_resampling_keeps_frequency_and_duration(tmp_path: Path) -> None:
    wav16 = sine(1000.0, seconds=1.0, sr=16000)
    path = tmp_path / "16k.wav"
    write_audio(path, wav16, 16000, subtype="FLOAT")
    out, rate = read_audio_with_rate(path, sample_rate=SR)
    assert rate == SR
    assert abs(len(out) - len(wav16) * 3 // 2) <= 1
    assert abs(peak_frequency(out, SR) - 1000.0) < 2.0
    # Away from the edges the resampled sine matches an ideal 24 kHz sine.
    np.testing.assert_allclose(out[1000:-1000], sine(1000.0, sr=SR)[1000:-1000], atol=2e-3)


def test_resample_helper() -> None:
    wav = sine(seconds=0.5)
    assert resample(wav, SR, SR) is wav
    stereo = np.stack([wav, -wav])
    out = resample(stereo, SR, 16000)
    assert out.shape == (2, 8000)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], -out[1])
    with pytest.raises(InputError):
        resample(wav, 0, SR)


def test_sample_rate_none_keeps_native_rate(tmp_path: Path) -> None:
    path = tmp_path / "8k.flac"
    write_audio(path, sine(seconds=0.5, sr=8000), 8000)
    out, rate = read_audio_with_rate(path, sample_rate=None)
    assert (rate, out.shape) == (8000, (4000,))
    assert read_audio(path).shape == (12000,)


# --- sources ---


class _PipeLike:
    """A non-seekable binary stream with a name, like sys.stdin.buffer."""

    name = "<stdin>"

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._buf.read(size)


def test_read_from_bytes_and_streams(tmp_path: Path) -> None:
    wav = sine(seconds=0.5) + speech_like(0.5) * 0.2
    path = tmp_path / "src.flac"
    write_audio(path, wav, SR)
    from_path = read_audio(str(path))
    data = path.read_bytes()
    np.testing.assert_array_equal(read_audio(data), from_path)
    np.testing.assert_array_equal(read_audio(bytearray(data)), from_path)
    np.testing.assert_array_equal(read_audio(io.BytesIO(data)), from_path)
    np.testing.assert_array_equal(read_audio(_PipeLike(data)), from_path)
    with path.open("rb") as f:
        np.testing.assert_array_equal(read_audio(f), from_path)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "opus", "mp3"])
def test_encode_audio_decodes_back(fmt: str) -> None:
    wav = sine(seconds=1.0)
    data = encode_audio(torch.from_numpy(wav), SR, fmt)
    assert isinstance(data, bytes)
    out = read_audio(data, name=f"<{fmt}>")
    assert abs(len(out) - len(wav)) <= FRAME
    assert corr(out, wav) > 0.98


def test_encode_audio_raw_pcm() -> None:
    wav = np.array([0.0, 0.5, -1.0, 1.5], dtype=np.float32)
    data = encode_audio(wav, SR, "pcm")
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<i2"), [0, 16384, -32767, 32767])
    stereo = encode_audio(np.stack([wav, -wav]), SR, "pcm")
    np.testing.assert_array_equal(np.frombuffer(stereo, dtype="<i2")[:4], [0, 0, 16384, -16384])
    with pytest.raises(AudioError, match="supported"):
        encode_audio(wav, SR, "aac")


# --- errors ---


def _cut(path: Path, keep: float | int) -> Path:
    data = path.read_bytes()
    size = keep if isinstance(keep, int) else int(len(data) * keep)
    out = path.with_name(f"cut_{path.name}")
    out.write_bytes(data[:size])
    return out


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="not found") as err:
        read_audio(path)
    assert_names(err, path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="directory") as err:
        read_audio(tmp_path)
    assert_names(err, tmp_path)


def test_empty_file_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "speech.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty \(0 bytes\)") as err:
        read_audio(path)
    assert_names(err, path)
    with pytest.raises(AudioError, match="empty") as err:
        read_audio(_PipeLike(b""))
    assert_names(err, "<stdin>")


@pytest.mark.parametrize(
    "ext, keep, reason",
    [
        ("wav", 20, "malformed or truncated"),  # cut inside the RIFF header
        ("wav", 44, "no audio samples"),  # header only
        ("flac", 0.5, "truncated or corrupt"),
        ("mp3", 0.5, "truncated"),
        ("ogg", 0.5, "truncated"),
        ("ogg", 0.2, "malformed or truncated"),
        ("opus", 0.3, "malformed or truncated"),
    ],
)
def test_truncated_files(tmp_path: Path, ext: str, keep: float | int, reason: str) -> None:
    path = tmp_path / f"speech.{ext}"
    write_audio(path, sine(seconds=2.0), SR)
    cut = _cut(path, keep)
    with pytest.raises(AudioError, match=reason) as err:
        read_audio(cut)
    assert_names(err, cut)
    with pytest.raises(AudioError, match=reason) as err:
        read_audio(cut.read_bytes(), name="upload")
    assert_names(err, "upload")


def test_truncated_wav_data_reads_what_is_there(tmp_path: Path) -> None:
    """A wav cut inside its samples (e.g. a recording still being written) decodes up to the cut."""
    path = tmp_path / "partial.wav"
    write_audio(path, sine(seconds=1.0), SR)
    out = read_audio(_cut(path, 44 + 2 * 1000))
    np.testing.assert_allclose(out, sine(seconds=1.0)[:1000], atol=1 / 32767)


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the samples you are looking for\n" * 20)
    with pytest.raises(AudioError, match="not a recognised audio format") as err:
        read_audio(path)
    assert_names(err, path)
    assert err.value.__cause__ is not None  # the libsndfile error is chained


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="not a recognised audio format|could not decode") as err:
        read_audio(path)
    assert_names(err, path)


def test_zero_sample_wav(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    assert path.stat().st_size > 0
    with pytest.raises(AudioError, match="no audio samples") as err:
        read_audio(path)
    assert_names(err, path)


def test_non_finite_samples(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    wav = sine(seconds=0.1)
    wav[10] = np.nan
    sf.write(path, wav, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite") as err:
        read_audio(path)
    assert_names(err, path)


def test_write_errors(tmp_path: Path) -> None:
    path = tmp_path / "out.aac"
    with pytest.raises(AudioError, match=r"\.wav, \.flac") as err:
        write_audio(path, sine(), SR)
    assert_names(err, path)
    missing_dir = tmp_path / "missing" / "out.wav"
    with pytest.raises(AudioError, match="does not exist") as err:
        write_audio(missing_dir, sine(), SR)
    assert_names(err, missing_dir)
    with pytest.raises(AudioError, match="subtype"):
        write_audio(tmp_path / "out.flac", sine(), SR, subtype="VORBIS")


def test_unsupported_source_type() -> None:
    with pytest.raises(InputError):
        read_audio(12345)  # type: ignore[arg-type]


# --- reading block by block ---


@pytest.mark.parametrize(
    "ext, rate",
    [("wav", 16000), ("wav", 24000), ("wav", 44100), ("flac", 44100), ("mp3", 16000), ("ogg", 44100)],
)
@pytest.mark.parametrize("target", [SR, None])
def test_stream_audio_equals_read_audio(tmp_path: Path, ext: str, rate: int, target: int | None) -> None:
    stereo = np.stack([speech_like(2.3, rate, seed=1), sine(330.0, 2.3, rate)])  # down-mixed as read_audio
    path = tmp_path / f"speech.{ext}"
    write_audio(path, stereo, rate)
    expected = read_audio(path, target)
    stream = stream_audio(path, target, block_frames=5000)
    assert stream.sample_rate == (target or rate) and stream.duration == pytest.approx(2.3, abs=0.1)
    blocks = list(stream)
    assert len(blocks) > 2 and all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    got = np.concatenate(blocks)
    if ext == "mp3":  # libmpg123 rounds a little differently when asked for fewer frames at a time
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, expected)
    from_bytes = np.concatenate(list(stream_audio(path.read_bytes(), target)))
    np.testing.assert_allclose(from_bytes, expected, rtol=0, atol=1e-5)
    assert next(stream, None) is None  # exhausted (and the file closed)


def test_stream_audio_errors(tmp_path: Path) -> None:
    """The same errors as read_audio, raised when the stream is opened where the file allows."""
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="not found") as err:
        stream_audio(missing)
    assert_names(err, missing)
    corrupt = tmp_path / "noise.wav"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="not a recognised audio format|could not decode") as err:
        stream_audio(corrupt)
    assert_names(err, corrupt)
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="no audio samples"):
        stream_audio(silent)
    path = tmp_path / "speech.mp3"
    write_audio(path, sine(seconds=2.0), SR)
    cut = _cut(path, 0.5)  # the header announces 2 s: known to be cut only at the end
    with pytest.raises(AudioError, match="truncated") as err:
        list(stream_audio(cut))
    assert_names(err, cut)
    nan = tmp_path / "nan.wav"
    wav = sine(seconds=1.0)
    wav[20000] = np.nan
    sf.write(nan, wav, SR, subtype="FLOAT")
    stream = stream_audio(nan, block_frames=10000)
    assert len(next(stream)) == 10000
    with pytest.raises(AudioError, match="non-finite"):
        list(stream)
    with pytest.raises(InputError, match="block_frames"):
        stream_audio(path, block_frames=0)


# --- streaming opus ---


def _stream_round_trip(wav: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    encoder, decoder = OpusStreamEncoder(SR), OpusStreamDecoder(SR)
    pages = [encoder.encode(wav[i : i + FRAME]) for i in range(0, len(wav), FRAME)]
    return pages, np.concatenate([decoder.decode(page) for page in pages])


def test_opus_stream_round_trip() -> None:
    wav = sine(seconds=2.0, amp=0.4) + speech_like(2.0)
    pages, out = _stream_round_trip(wav)
    assert pages[0].startswith(b"OggS") and b"OpusHead" in pages[0]
    assert all(pages), "every 80 ms frame should produce an Ogg page"
    assert abs(len(out) - len(wav)) <= FRAME
    lag = best_lag(wav, out, max_lag=FRAME)
    assert 100 <= lag <= 300, lag  # the Opus pre-skip: 156 samples at 24 kHz
    ref, test = wav[: len(out) - lag], out[lag:]
    assert corr(ref, test) > 0.95
    assert snr_db(ref, test) > 8.0


def test_opus_stream_decodes_any_byte_split() -> None:
    wav = sine(seconds=1.0) + speech_like(1.0)
    pages, whole = _stream_round_trip(wav)
    stream = b"".join(pages)
    decoder = OpusStreamDecoder(SR)
    pieces = [decoder.decode(stream[i : i + 37]) for i in range(0, len(stream), 37)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert decoder.decode(b"").size == 0


@pytest.mark.parametrize(
    "garbage",
    [b"hello, this is not opus" * 10, np.random.default_rng(2).bytes(700), b"OggS" + bytes(200)],
)
def test_opus_stream_rejects_garbage(garbage: bytes) -> None:
    decoder = OpusStreamDecoder(SR)
    with pytest.raises(AudioError, match="malformed Ogg/Opus") as err:
        decoder.decode(garbage)
    assert err.value.__cause__ is not None
    assert decoder.closed
    with pytest.raises(AudioError, match="closed"):
        decoder.decode(OpusStreamEncoder(SR).encode(sine(seconds=0.08)))


def test_opus_stream_rejects_corrupted_packets() -> None:
    pages, _ = _stream_round_trip(sine(seconds=1.0))
    stream = bytearray(b"".join(pages))
    stream[len(pages[0]) + 10 :: 97] = bytes(len(stream[len(pages[0]) + 10 :: 97]))
    decoder = OpusStreamDecoder(SR)
    with pytest.raises(AudioError):
        decoder.decode(bytes(stream))


def test_opus_stream_invalid_arguments() -> None:
    with pytest.raises(AudioError, match="44100"):
        OpusStreamEncoder(44100)
    with pytest.raises(AudioError, match="44100"):
        OpusStreamDecoder(44100)
    encoder = OpusStreamEncoder(SR)
    with pytest.raises(InputError):
        encoder.encode(np.zeros((2, FRAME), dtype=np.float32))
    with pytest.raises(InputError):
        encoder.encode(np.full(FRAME, np.inf, dtype=np.float32))
    assert encoder.encode(torch.zeros(1, FRAME)).startswith(b"OggS")
