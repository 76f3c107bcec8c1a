"""Turning a synthesiser's timed phonemes into word timings, shared by the espeak-ng and Piper generators.

A transcript's words are its whitespace-separated tokens (punctuation stays attached, as in the text
streams DSM models are trained on). A synthesiser reports timed phonemes grouped into spoken units that do
not always match those tokens: it merges unstressed function words ("of the"), and may split a token
("l'homme"). Groups covering several tokens are split at phoneme boundaries in proportion to each token's
phoneme count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dsm.audio import resample
from dsm.errors import InputError
from dsm.train.data.manifest import WordTiming
from dsm.train.data.numbers import LANGS, spell_numbers


@dataclass(frozen=True)
class Phone:
    """A phoneme spoken from sample `start` to sample `end`."""

    name: str
    start: int
    end: int


@dataclass
class AlignedSpeech:
    """Synthesised speech with word timings (seconds) for every token of `text`."""

    audio: np.ndarray  # float32 mono
    sample_rate: int
    text: str
    words: list[WordTiming]
    speaker: str
    info: dict[str, object] = field(default_factory=dict)  # engine, rate, pitch...

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def resampled(self, sample_rate: int) -> AlignedSpeech:
        """The same speech at another sample rate (word times are in seconds, so they do not change)."""
        if sample_rate == self.sample_rate:
            return self
        audio = resample(self.audio, self.sample_rate, sample_rate)
        return AlignedSpeech(audio, sample_rate, self.text, list(self.words), self.speaker, dict(self.info))

    def padded(self, before: float, after: float) -> AlignedSpeech:
        """Silence added before and after (seconds); word times shift by the leading silence."""
        lead, tail = round(before * self.sample_rate), round(after * self.sample_rate)
        audio = np.concatenate([np.zeros(lead, np.float32), self.audio, np.zeros(tail, np.float32)])
        shift = lead / self.sample_rate
        words = [WordTiming(w.word, w.start + shift, w.end + shift) for w in self.words]
        return AlignedSpeech(audio, self.sample_rate, self.text, words, self.speaker, dict(self.info))


def tokens(text: str) -> list[str]:
    """The words of a transcript: its whitespace-separated tokens."""
    return text.split()


def is_spoken(token: str) -> bool:
    """Whether a token has anything to say (a letter or digit), unlike a lone dash or quote."""
    return any(ch.isalnum() for ch in token)


def spoken_text(text: str, language: str) -> str:
    """The text as a synthesiser says it and its transcript reads: whitespace collapsed, numbers written
    out (in the languages `dsm.train.data.numbers` knows)."""
    text = " ".join(text.split())
    return spell_numbers(text, language) if language in LANGS else text


def speakable(text: str, language: str) -> tuple[str, list[str]]:
    """`spoken_text` and its words; InputError if no word has anything to say."""
    spoken = spoken_text(text, language)
    words = tokens(spoken)
    if not any(is_spoken(w) for w in words):
        raise InputError(f"nothing to say in {text!r}")
    return spoken, words


def split_group(phones: Sequence[Phone], counts: Sequence[int]) -> list[tuple[int, int]]:
    """Sample spans for consecutive words spoken as one group of `phones`, split at phoneme boundaries
    in proportion to each word's phoneme count (each word gets at least one phoneme when there are
    enough; otherwise the group's time is split in proportion)."""
    k = len(counts)
    if k == 0:
        return []
    if not phones:
        raise ValueError("a group of words needs at least one phone")
    weights = [max(1, c) for c in counts]
    total = sum(weights)
    n = len(phones)
    if n < k:
        start, end = phones[0].start, phones[-1].end
        cuts = [start + round((end - start) * sum(weights[:i]) / total) for i in range(k + 1)]
        return [(cuts[i], cuts[i + 1]) for i in range(k)]
    bounds = [0]
    for i in range(1, k):
        b = round(n * sum(weights[:i]) / total)
        bounds.append(min(max(b, bounds[-1] + 1), n - (k - i)))
    bounds.append(n)
    return [(phones[bounds[i]].start, phones[bounds[i + 1] - 1].end) for i in range(k)]


def finish_words(
    words: Sequence[str], spans: Sequence[tuple[int, int] | None], sample_rate: int, num_samples: int
) -> list[WordTiming]:
    """WordTimings in seconds from per-word sample spans; words without a span (punctuation) get an
    empty span where the previous word ends. Times are clamped to be sorted, non-overlapping and inside
    the audio."""
    out = []
    prev_end = 0
    first = next((s[0] for s in spans if s is not None), 0)
    for word, span in zip(words, spans, strict=True):
        if span is None:
            at = prev_end if out else first
            start = end = at
        else:
            start = min(max(span[0], prev_end), num_samples)
            end = min(max(span[1], start), num_samples)
        out.append(WordTiming(word, start / sample_rate, end / sample_rate))
        prev_end = end
    return out
