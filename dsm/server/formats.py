"""OpenAI-style transcription responses (`response_format`): json, text, srt, vtt and verbose_json.

Segments, SRT and WebVTT come from `dsm.stt.formats` (the same as `dsm stt` writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dsm.stt.formats import segments_from_words, to_srt, to_vtt
from dsm.stt.timestamps import Word

__all__ = ["RESPONSE_FORMATS", "render", "verbose_json"]

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
}


def verbose_json(
    text: str, words: Sequence[Word], duration: float, language: str, granularities: Sequence[str]
) -> dict[str, Any]:
    """OpenAI's verbose_json: segments unless only word granularity was asked, words when asked."""
    out: dict[str, Any] = {"task": "transcribe", "language": language, "duration": duration, "text": text}
    if "segment" in granularities or not granularities:
        out["segments"] = [
            {
                "id": i,
                "seek": 0,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for i, s in enumerate(segments_from_words(words))
        ]
    if "word" in granularities:
        out["words"] = [{"word": w.text, "start": w.start, "end": w.end} for w in words]
    return out


def render(
    fmt: str,
    text: str,
    words: Sequence[Word],
    duration: float,
    language: str = "en",
    granularities: Sequence[str] = (),
) -> tuple[str | dict[str, Any], str]:
    """(body, content type): a dict for the JSON formats, text otherwise."""
    if fmt == "json":
        return {"text": text}, CONTENT_TYPES[fmt]
    if fmt == "verbose_json":
        return verbose_json(text, words, duration, language, granularities), CONTENT_TYPES[fmt]
    if fmt == "text":
        return text + "\n", CONTENT_TYPES[fmt]
    if fmt == "srt":
        return to_srt(segments_from_words(words)), CONTENT_TYPES[fmt]
    if fmt == "vtt":
        return to_vtt(segments_from_words(words)), CONTENT_TYPES[fmt]
    raise ValueError(f"unknown response format {fmt!r}")
