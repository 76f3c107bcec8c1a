"""Transcript output: subtitle segments from timed words, and text / JSON / SRT / WebVTT renderings.

Segments group consecutive words the way subtitle tools do: a new segment starts after a pause of
``max_gap`` seconds, after sentence-final punctuation, or when the line would exceed ``max_chars``
characters or ``max_duration`` seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsm.stt.timestamps import Word

__all__ = ["FORMATS", "Segment", "render", "segments_from_words", "to_json", "to_srt", "to_vtt"]

FORMATS = ("text", "json", "srt", "vtt")
SENTENCE_END = (".", "?", "!", "\u3002", "\u061f")


@dataclass(frozen=True)
class Segment:
    """A subtitle-sized run of words."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...]


def segments_from_words(
    words: Sequence[Word], *, max_gap: float = 0.8, max_chars: int = 84, max_duration: float = 7.0
) -> list[Segment]:
    """Group words into segments (see the module docstring)."""
    segments: list[Segment] = []
    current: list[Word] = []

    def close() -> None:
        if current:
            text = " ".join(w.text for w in current)
            segments.append(Segment(current[0].start, current[-1].end, text, tuple(current)))
            current.clear()

    for word in words:
        if current:
            previous = current[-1]
            length = sum(len(w.text) + 1 for w in current) + len(word.text)
            if (
                word.start - previous.end > max_gap
                or previous.text.endswith(SENTENCE_END)
                or length > max_chars
                or word.end - current[0].start > max_duration
            ):
                close()
        current.append(word)
    close()
    return segments


def _timestamp(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def to_srt(segments: Sequence[Segment]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``."""
    cues = [
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT: a ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues."""
    cues = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def _word_dict(word: Word) -> dict[str, Any]:
    return {"word": word.text, "start": round(word.start, 3), "end": round(word.end, 3)}


def to_json(
    text: str,
    words: Sequence[Word],
    *,
    duration: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-ready dict: text, duration, words and segments (with their words), plus ``extra`` keys."""
    out: dict[str, Any] = {"text": text}
    if duration is not None:
        out["duration"] = round(duration, 3)
    out["words"] = [_word_dict(w) for w in words]
    out["segments"] = [
        {
            "id": i,
            "start": round(s.start, 3),
            "end": round(s.end, 3),
            "text": s.text,
            "words": [_word_dict(w) for w in s.words],
        }
        for i, s in enumerate(segments_from_words(words))
    ]
    if extra:
        out.update(extra)
    return out


def render(fmt: str, text: str, words: Sequence[Word]) -> str:
    """``text`` as plain text, or the words as SRT / WebVTT subtitles (JSON: use `to_json`)."""
    if fmt == "text":
        return text.strip() + "\n"
    if fmt == "srt":
        return to_srt(segments_from_words(words))
    if fmt == "vtt":
        return to_vtt(segments_from_words(words))
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
