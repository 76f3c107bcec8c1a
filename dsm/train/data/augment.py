"""Audio augmentation for training data: noise at a chosen SNR, gain, speed and room-like reverberation.

Every random choice comes from a `numpy.random.Generator`, so a seed reproduces the result. Word timings
follow the audio: a speed change scales them, the others leave them in place (reverberation keeps the
direct sound at time 0 and only adds a tail).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dsm.audio import resample
from dsm.errors import InputError
from dsm.train.data.manifest import WordTiming

NOISE_KINDS = ("white", "pink", "brown")
_DECAY_60DB = np.log(1000.0)  # amplitude ratio of 60 dB, as a natural log


def _check_audio(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise InputError(f"expected mono audio of shape [T], got {tuple(wav.shape)}")
    return wav


def power(wav: np.ndarray) -> float:
    """Mean square of the samples."""
    return float(np.mean(np.square(wav, dtype=np.float64))) if len(wav) else 0.0


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of `noisy` against the `clean` signal it was made from."""
    return 10 * np.log10(power(clean) / max(power(np.asarray(noisy) - clean), 1e-30))


def colored_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise: white (flat), pink (1/f power) or brown (1/f^2 power)."""
    if kind not in NOISE_KINDS:
        raise InputError(f"unknown noise kind {kind!r} (known: {', '.join(NOISE_KINDS)})")
    white = rng.standard_normal(length)
    if kind != "white" and length > 1:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(length)
        freqs[0] = freqs[1]
        spectrum /= freqs ** (0.5 if kind == "pink" else 1.0)
        white = np.fft.irfft(spectrum, n=length)
    white -= white.mean()
    return (white / np.sqrt(max(power(white), 1e-30))).astype(np.float32)


def add_noise(
    wav: np.ndarray, snr: float, rng: np.random.Generator, noise: str | np.ndarray = "white"
) -> np.ndarray:
    """`wav` plus noise scaled to `snr` dB (signal and noise power over the whole clip). `noise` is a kind
    (white, pink, brown) or a recording, looped and cut at a random offset to the clip's length."""
    wav = _check_audio(wav)
    if isinstance(noise, str):
        base = colored_noise(noise, len(wav), rng)
    else:
        base = _check_audio(noise)
        if not len(base) or power(base) == 0:
            raise InputError("noise recording is empty or silent")
        reps = -(-len(wav) // len(base)) + 1
        start = int(rng.integers(len(base)))
        base = np.tile(base, reps)[start : start + len(wav)]
    signal_power, noise_power = power(wav), power(base)
    if signal_power == 0 or noise_power == 0:
        return wav.copy()
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr / 10)))
    return (wav + scale * base).astype(np.float32)


def apply_gain(wav: np.ndarray, gain_db: float) -> np.ndarray:
    """`wav` scaled by `gain_db` decibels."""
    return (_check_audio(wav) * np.float32(10 ** (gain_db / 20))).astype(np.float32)


def change_speed(wav: np.ndarray, factor: float, sample_rate: int) -> tuple[np.ndarray, float]:
    """Play `wav` `factor` times faster (pitch follows, like a tape): the duration divides by the factor.
    Returns the audio and the exact factor applied (the resampling ratio is rounded to integer rates)."""
    wav = _check_audio(wav)
    if not 0.25 <= factor <= 4:
        raise InputError(f"speed factor must be in 0.25..4, got {factor}")
    source_rate = round(sample_rate * factor)
    return resample(wav, source_rate, sample_rate), source_rate / sample_rate


def room_impulse(
    sample_rate: int, rt60: float, rng: np.random.Generator, drr_db: float = 3.0, reflections: int = 8
) -> np.ndarray:
    """A synthetic room impulse response: the direct sound (1 at t=0), a few early reflections in the
    first 50 ms, and a diffuse tail of noise decaying exponentially by 60 dB over `rt60` seconds, its
    energy `drr_db` dB below the direct sound. Length: rt60 seconds."""
    if not 0.05 <= rt60 <= 5:
        raise InputError(f"reverberation time rt60 must be in 0.05..5 s, got {rt60}")
    length = max(2, round(rt60 * sample_rate))
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-_DECAY_60DB * t / rt60)
    onset = min(length - 1, round(0.005 * sample_rate))  # the tail builds up after the direct sound
    tail[:onset] *= np.linspace(0, 1, onset, endpoint=False)
    # Walls absorb highs: a gentle one-pole low-pass.
    tail = np.convolve(tail, 0.6 * 0.4 ** np.arange(16))[:length]
    for _ in range(reflections):
        at = int(
            rng.integers(max(1, round(0.002 * sample_rate)), max(2, min(length, round(0.05 * sample_rate))))
        )
        tail[at] += rng.uniform(-0.5, 0.5)
    tail[0] = 0.0
    tail *= np.sqrt(10 ** (-drr_db / 10) / max(float(np.sum(tail**2)), 1e-30))
    tail[0] = 1.0
    return tail.astype(np.float32)


def add_reverb(wav: np.ndarray, impulse: np.ndarray) -> np.ndarray:
    """`wav` convolved with a room impulse response: len(wav) + len(impulse) - 1 samples."""
    wav, impulse = _check_audio(wav), _check_audio(impulse)
    n = len(wav) + len(impulse) - 1
    size = 1 << max(0, (n - 1).bit_length())
    out = np.fft.irfft(np.fft.rfft(wav, size) * np.fft.rfft(impulse, size), size)[:n]
    return out.astype(np.float32)


def scale_words(words: Sequence[WordTiming], factor: float) -> list[WordTiming]:
    """Word times after the audio was sped up by `factor` (times divide by it)."""
    return [WordTiming(w.word, w.start / factor, w.end / factor) for w in words]


# -- random augmentation chains -------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Ranges of a random augmentation chain (speed, reverberation, noise, gain, in that order); a
    probability of 0 turns a step off."""

    speed: tuple[float, float] = (0.9, 1.1)
    speed_prob: float = 0.5
    rt60: tuple[float, float] = (0.2, 0.8)
    reverb_prob: float = 0.3
    drr_db: tuple[float, float] = (0.0, 10.0)
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_prob: float = 0.8
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    noise_clips: list[np.ndarray] = field(default_factory=list)  # recordings to draw noise from
    gain_db: tuple[float, float] = (-6.0, 6.0)
    gain_prob: float = 1.0

    def validate(self) -> None:
        for name in ("speed_prob", "reverb_prob", "noise_prob", "gain_prob"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise InputError(f"{name} must be a probability in 0..1, got {p}")
        for name in ("speed", "rt60", "drr_db", "snr_db", "gain_db"):
            low, high = getattr(self, name)
            if low > high:
                raise InputError(f"{name}: range low {low} is above high {high}")
        if self.speed[0] <= 0.25 or self.speed[1] > 4:
            raise InputError(f"speed range must lie in 0.25..4, got {self.speed}")
        unknown = [k for k in self.noise_kinds if k not in NOISE_KINDS]
        if unknown:
            raise InputError(f"unknown noise kinds {unknown} (known: {', '.join(NOISE_KINDS)})")
        if self.noise_prob > 0 and not self.noise_kinds and not self.noise_clips:
            raise InputError("noise is on but no noise kind or recording is given")


def augment(
    wav: np.ndarray,
    sample_rate: int,
    words: Sequence[WordTiming] | None,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
) -> tuple[np.ndarray, list[WordTiming] | None, dict[str, float | str]]:
    """One random augmentation of an utterance: the audio, its word times, and what was applied."""
    config = config or AugmentConfig()
    config.validate()
    wav = _check_audio(wav)
    applied: dict[str, float | str] = {}
    out_words = list(words) if words is not None else None
    if rng.random() < config.speed_prob:
        wav, factor = change_speed(wav, float(rng.uniform(*config.speed)), sample_rate)
        out_words = scale_words(out_words, factor) if out_words is not None else None
        applied["speed"] = factor
    if rng.random() < config.reverb_prob:
        rt60, drr = float(rng.uniform(*config.rt60)), float(rng.uniform(*config.drr_db))
        wav = add_reverb(wav, room_impulse(sample_rate, rt60, rng, drr_db=drr))
        applied.update(rt60=round(rt60, 3), drr_db=round(drr, 2))
    if rng.random() < config.noise_prob:
        snr = float(rng.uniform(*config.snr_db))
        sources: list[str | np.ndarray] = [*config.noise_kinds, *config.noise_clips]
        pick = int(rng.integers(len(sources)))
        wav = add_noise(wav, snr, rng, sources[pick])
        applied.update(
            snr_db=round(snr, 2), noise=sources[pick] if isinstance(sources[pick], str) else "clip"
        )
    if rng.random() < config.gain_prob:
        gain = float(rng.uniform(*config.gain_db))
        peak = float(np.max(np.abs(wav))) if len(wav) else 0.0
        if peak * 10 ** (gain / 20) > 0.99:  # never clip: lower the gain to fit
            gain = 20 * np.log10(0.99 / peak)
        wav = apply_gain(wav, gain)
        applied["gain_db"] = round(gain, 2)
    return wav, out_words, applied


# -- manifests ------------------------------------------------------------------------------------------


def _load_noise_dir(noise_dir: str | os.PathLike, sample_rate: int) -> list[np.ndarray]:
    from dsm.audio import read_audio
    from dsm.train.data.importers import AUDIO_EXTENSIONS

    folder = Path(noise_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: noise directory not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise InputError(f"{folder}: no audio files for noise")
    return [read_audio(p, sample_rate=sample_rate) for p in files]


def augment_manifest(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: AugmentConfig | None = None,
    *,
    copies: int = 1,
    seed: int = 0,
    sample_rate: int = 24000,
    noise_dir: str | os.PathLike | None = None,
    keep_original: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[int, float]:
    """Write `copies` augmented versions of every utterance of `manifest` to `out_dir` (clips/ and
    manifest.jsonl, with an "augment" key saying what was applied); returns (utterances, seconds)."""
    from tqdm import tqdm

    from dsm.audio import encode_audio, read_audio
    from dsm.train.data.manifest import manifest_root, read_manifest, rebase, write_manifest

    config = config or AugmentConfig()
    if noise_dir is not None:
        config.noise_clips = [*config.noise_clips, *_load_noise_dir(noise_dir, sample_rate)]
    config.validate()
    if copies < 1:
        raise InputError(f"copies must be >= 1, got {copies}")
    out = Path(out_dir)
    target = out / "manifest.jsonl"
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists (choose another directory, or overwrite)")
    utts = read_manifest(manifest)
    root = manifest_root(manifest)
    out.mkdir(parents=True, exist_ok=True)
    results = rebase(utts, root, out) if keep_original else []
    for i, utt in enumerate(tqdm(utts, desc="augment", unit="utt", disable=not progress)):
        wav = read_audio(utt.audio_path(root), sample_rate=sample_rate, mono=True)
        for c in range(copies):
            rng = np.random.default_rng([seed, i, c])
            audio, words, applied = augment(wav, sample_rate, utt.words, rng, config)
            n = i * copies + c
            path = out / "clips" / f"{n // 1000:03d}" / f"{n:06d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_audio(np.clip(audio, -1, 1), sample_rate, "wav"))
            extra = {**utt.extra, "augment": applied, "source": str(utt.audio_path(root))}
            results.append(
                replace(
                    utt,
                    audio=path.relative_to(out).as_posix(),
                    words=words,
                    duration=len(audio) / sample_rate,
                    extra=extra,
                )
            )
    write_manifest(target, results)
    return len(results), sum(u.duration or 0.0 for u in results)
