"""The bundled-model recipe's corpus helpers (scripts/bundled_data.py): speaker filtering and the speed
perturbation that makes the TTS's second voice."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dsm.audio import read_audio, write_audio
from dsm.train.data.manifest import Utterance, WordTiming, read_manifest, write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bundled_data  # noqa: E402

RATE = 24_000


def _corpus(root: Path) -> Path:
    """Two speakers, one 2 s clip each: a 200 Hz tone for "a", 300 Hz for "b"."""
    t = np.arange(2 * RATE) / RATE
    utts = []
    for name, freq, split in (("a", 200.0, "train"), ("b", 300.0, "test")):
        write_audio(root / f"{name}.wav", 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32), RATE)
        words = [WordTiming("one", 0.2, 0.6), WordTiming("two", 1.0, 1.8)]
        utts.append(Utterance(f"{name}.wav", "one two", words, speaker=name, duration=2.0, split=split))
    manifest = root / "m.jsonl"
    write_manifest(manifest, utts)
    return manifest


def _peak_hz(wav: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wav))
    return float(np.argmax(spectrum) * RATE / len(wav))


def test_merge_keeps_named_speakers(tmp_path):
    manifest = _corpus(tmp_path)
    out = tmp_path / "sub" / "merged.jsonl"
    out.parent.mkdir()
    assert bundled_data.merge(out, [manifest], speakers="b") == 1
    (utt,) = read_manifest(out)
    assert utt.speaker == "b" and utt.split == "test"
    assert utt.audio_path(out.parent).resolve() == (tmp_path / "b.wav").resolve()
    assert bundled_data.merge(out, [manifest], default_split="train") == 2


@pytest.mark.parametrize("factor", [0.88, 1.2])
def test_speed_perturbation_scales_pitch_tempo_and_word_times(tmp_path, factor):
    manifest = _corpus(tmp_path)
    out_dir = tmp_path / "fast"
    assert bundled_data.speed(manifest, out_dir, "a", factor, "a-new") == 1
    (utt,) = read_manifest(out_dir / "manifest.jsonl")
    assert utt.speaker == "a-new" and utt.split == "train" and utt.text == "one two"
    assert utt.duration == pytest.approx(2.0 / factor, abs=1e-3)
    times = [t for w in utt.words for t in (w.start, w.end)]
    assert times == pytest.approx([t / factor for t in (0.2, 0.6, 1.0, 1.8)], abs=1e-3)
    wav = read_audio(str(utt.audio_path(out_dir)), sample_rate=None)
    assert len(wav) == pytest.approx(2 * RATE / factor, abs=2)
    assert _peak_hz(wav) == pytest.approx(200.0 * factor, rel=0.01)
    with pytest.raises(SystemExit, match="no utterance of speaker"):
        bundled_data.speed(manifest, out_dir, "nobody", factor, "x")
