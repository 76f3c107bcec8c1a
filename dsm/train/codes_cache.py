"""Mimi codes (and voice latents) computed once per audio file and kept on disk.

An entry's key is the SHA-256 of the audio file's bytes, the codec's identity (a hash of its weights and
architecture, :func:`codec_identity`) and the request (codebooks, silence appended, latent length), so a
renamed file reuses its entry and an edited file or another codec gets a new one; codes with less silence
appended are read from an entry with more (the codec is causal). Entries are safetensors
files written atomically (temporary file + ``os.replace``), so concurrent workers and killed runs never
leave a torn entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dsm.audio import read_audio
from dsm.codec import Mimi
from dsm.errors import AudioError
from dsm.tts.voices import voice_from_audio

_CHUNK = 1 << 20
# how much longer a cached encoding's silence may be and still serve a request (by its prefix)
LONGER_SILENCE = 32


def file_digest(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def codec_identity(mimi: Mimi) -> str:
    """A short hash of a codec's architecture and weights (what its codes depend on)."""
    digest = hashlib.sha256(json.dumps(asdict(mimi.cfg), sort_keys=True, default=str).encode())
    for name, tensor in sorted(mimi.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


class CodesCache:
    """Disk cache of Mimi outputs for audio files, under ``directory``.

    ``codes(path, n_q, silence_frames)`` gives int64 codes [n_q, F] of the file's audio followed by
    ``silence_frames`` frames of silence; ``latent(path, seconds)`` the unquantized latent [F, dim] of the
    first ``seconds`` of the audio, zero-padded to that length (a TTS voice condition).
    """

    def __init__(self, directory: str | Path, mimi: Mimi, device: str | torch.device = "cpu"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.mimi = mimi
        self.device = torch.device(device)
        self.identity = codec_identity(mimi)
        self._digests: dict[tuple[str, int, int], str] = {}
        self.hits = 0
        self.misses = 0

    def digest(self, path: str | Path) -> str:
        """Content hash of an audio file (memoised per path, size and modification time)."""
        path = Path(path)
        try:
            stat = path.stat()
        except OSError as e:
            raise AudioError(f"{path}: cannot read audio file ({e.strerror or e})") from e
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = file_digest(path)
        return self._digests[key]

    def _entry(self, path: str | Path, request: str) -> Path:
        key = hashlib.sha256(f"{self.digest(path)}:{self.identity}:{request}".encode()).hexdigest()
        return self.directory / key[:2] / f"{key}.safetensors"

    def _load(self, entry: Path) -> torch.Tensor | None:
        if not entry.is_file():
            return None
        try:
            return load_file(str(entry))["data"]
        except (SafetensorError, OSError, KeyError, ValueError):
            return None  # a damaged entry is recomputed

    def _store(self, entry: Path, data: torch.Tensor) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"data": data.contiguous().cpu()}, tmp)
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _wav(self, path: str | Path) -> torch.Tensor:
        wav = read_audio(str(path), sample_rate=self.mimi.sample_rate)
        if wav.size == 0:
            raise AudioError(f"{path}: audio is empty (0 samples)")
        return torch.from_numpy(np.ascontiguousarray(wav))

    def codes(self, path: str | Path, n_q: int, silence_frames: int = 0) -> torch.Tensor:
        """Codes [n_q, ceil(samples / 1920) + silence_frames] (int64) of the file, from the cache if there.

        Every codebook of the codec is computed and kept, so models reading fewer share the entry (the
        first ``n_q`` codes of a residual quantizer do not depend on how many follow)."""
        full = self.mimi.total_codebooks
        if not 1 <= n_q <= full:
            raise ValueError(f"n_q must lie in [1, {full}], got {n_q}")
        cached = self._cached_codes(path, full, silence_frames)
        if cached is not None:
            self.hits += 1
            return cached[:n_q].long()
        entry = self._entry(path, f"codes:{full}:{silence_frames}")
        self.misses += 1
        wav = self._wav(path)
        frame = self.mimi.frame_size
        wav = torch.nn.functional.pad(wav, (0, -wav.shape[0] % frame + silence_frames * frame))
        with torch.no_grad():
            codes = self.mimi.encode(wav.view(1, 1, -1).to(self.device), n_q=full)[0].cpu()
        dtype = torch.int16 if self.mimi.cardinality <= 32768 else torch.int32
        self._store(entry, codes.to(dtype))
        return codes[:n_q].long()

    def _cached_codes(self, path: str | Path, full: int, silence_frames: int) -> torch.Tensor | None:
        """The entry for this much silence, else the prefix of one with up to `LONGER_SILENCE` frames more:
        Mimi is causal, so a frame's codes depend only on the samples up to its end."""
        for extra in range(LONGER_SILENCE + 1):
            cached = self._load(self._entry(path, f"codes:{full}:{silence_frames + extra}"))
            if cached is not None:
                return cached[:, : cached.shape[1] - extra]
        return None

    def latent(self, path: str | Path, seconds: float) -> torch.Tensor:
        """Unquantized latent [round(seconds * 12.5), dim] (float32) of the file's first ``seconds``."""
        entry = self._entry(path, f"latent:{seconds:.3f}")
        cached = self._load(entry)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        latent = voice_from_audio(self.mimi, self._wav(path), seconds)[0].t().contiguous()
        self._store(entry, latent)
        return latent
