"""The aligned-data manifest: JSON Lines, one utterance per line.

    {"audio": "clips/0001.wav", "text": "hello world",
     "words": [{"word": "hello", "start": 0.12, "end": 0.48}, {"word": "world", "start": 0.55, "end": 0.98}],
     "speaker": "en-us+f3", "duration": 1.2, "split": "train"}

- `audio`: path relative to the manifest's directory (or absolute), any format `dsm.audio.read_audio` reads.
- `text`: the transcript. `words`: optional for evaluation-only data, required for training; seconds,
  sorted, non-overlapping, end >= start. `speaker`: voice or speaker id (default ""). `duration`: seconds
  (optional). `split`: optional tag. Other keys are kept (in `Utterance.extra`) and written back.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dsm.errors import InputError

# Times are written with millisecond precision (rounding keeps sorted, non-overlapping words so).
TIME_DECIMALS = 3
# A word may end this much after the announced duration (rounding, resampling) before it is an error.
DURATION_SLACK = 0.05
_EPS = 1e-6
_KNOWN_KEYS = ("audio", "text", "words", "speaker", "duration", "split")


@dataclass(frozen=True)
class WordTiming:
    """One word of the transcript and when it is spoken, in seconds from the start of the audio."""

    word: str
    start: float
    end: float

    def to_json(self) -> dict[str, Any]:
        return {"word": self.word, "start": _round(self.start), "end": _round(self.end)}


@dataclass
class Utterance:
    """One manifest line. `extra` holds the keys the format does not define (kept when written back)."""

    audio: str
    text: str
    words: list[WordTiming] | None = None
    speaker: str = ""
    duration: float | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def audio_path(self, root: str | os.PathLike) -> Path:
        """The audio file, resolved against `root` (the manifest's directory) when relative."""
        path = Path(self.audio).expanduser()
        return path if path.is_absolute() else Path(root) / path

    def validate(self) -> None:
        """Raise InputError (without a location) when a field breaks the format."""
        _check_fields(self.audio, self.text, self.speaker, self.duration, self.split)
        if self.words is not None:
            check_words(self.words, self.duration)

    def to_json(self) -> dict[str, Any]:
        """The manifest line as a dict (times rounded to milliseconds)."""
        obj: dict[str, Any] = {"audio": self.audio, "text": self.text}
        if self.words is not None:
            obj["words"] = [w.to_json() for w in self.words]
        obj["speaker"] = self.speaker
        if self.duration is not None:
            obj["duration"] = _round(self.duration)
        if self.split is not None:
            obj["split"] = self.split
        obj.update({k: v for k, v in self.extra.items() if k not in _KNOWN_KEYS})
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> Utterance:
        """Parse and validate one decoded manifest line (raises InputError without a location)."""
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__}")
        for key in ("audio", "text"):
            if key not in obj:
                raise InputError(f"missing required key '{key}'")
        words = None
        if obj.get("words") is not None:
            words = _parse_words(obj["words"])
        utt = cls(
            audio=obj["audio"],
            text=obj["text"],
            words=words,
            speaker=obj.get("speaker", ""),
            duration=obj.get("duration"),
            split=obj.get("split"),
            extra={k: v for k, v in obj.items() if k not in _KNOWN_KEYS},
        )
        utt.validate()
        return utt


def _round(x: float) -> float:
    return round(float(x), TIME_DECIMALS)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_fields(audio: Any, text: Any, speaker: Any, duration: Any, split: Any) -> None:
    if not isinstance(audio, str) or not audio.strip():
        raise InputError(f"'audio' must be a non-empty path string, got {audio!r}")
    if not isinstance(text, str):
        raise InputError(f"'text' must be a string, got {type(text).__name__}")
    if not isinstance(speaker, str):
        raise InputError(f"'speaker' must be a string, got {speaker!r}")
    if duration is not None and (not _is_number(duration) or duration <= 0):
        raise InputError(f"'duration' must be a positive number of seconds, got {duration!r}")
    if split is not None and not isinstance(split, str):
        raise InputError(f"'split' must be a string, got {split!r}")


def _parse_words(raw: Any) -> list[WordTiming]:
    if not isinstance(raw, list):
        raise InputError(f"'words' must be a list, got {type(raw).__name__}")
    words = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InputError(f"words[{i}] must be an object with word, start, end")
        for key in ("word", "start", "end"):
            if key not in item:
                raise InputError(f"words[{i}] is missing '{key}'")
        words.append(WordTiming(item["word"], item["start"], item["end"]))
    return words


def check_words(words: list[WordTiming], duration: float | None = None) -> None:
    """Raise InputError unless the words are non-empty strings with finite times, sorted, non-overlapping,
    end >= start >= 0, and (when the duration is known) ending inside the audio."""
    prev_end = 0.0
    for i, w in enumerate(words):
        if not isinstance(w.word, str) or not w.word.strip():
            raise InputError(f"words[{i}]: 'word' must be a non-empty string, got {w.word!r}")
        label = f"words[{i}] ({w.word!r})"
        if not (_is_number(w.start) and _is_number(w.end)):
            raise InputError(f"{label}: start and end must be finite numbers, got {w.start!r}, {w.end!r}")
        if w.start < 0:
            raise InputError(f"{label}: start {w.start} is negative")
        if w.end < w.start:
            raise InputError(f"{label}: end {w.end} is before start {w.start}")
        if w.start < prev_end - _EPS:
            raise InputError(
                f"{label}: starts at {w.start} before the previous word ends ({prev_end}); "
                "words must be sorted and non-overlapping"
            )
        prev_end = w.end
    if duration is not None and words and words[-1].end > duration + DURATION_SLACK:
        raise InputError(
            f"words[{len(words) - 1}] ({words[-1].word!r}): ends at {words[-1].end} s, "
            f"after the end of the audio ({duration} s)"
        )


# -- files ----------------------------------------------------------------------------------------------


def iter_manifest(path: str | os.PathLike, *, require_words: bool = False) -> Iterator[Utterance]:
    """Utterances of a manifest file, one per non-blank line; errors name the file and line number."""
    path = Path(path)
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: manifest not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e
    with f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):  # noqa: B007 (lineno is read in the except clause)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    where = f"{path}:{lineno}"
                    raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                try:
                    utt = Utterance.from_json(obj)
                    if require_words and utt.words is None:
                        raise InputError("no 'words': training needs word timings")
                except InputError as e:
                    raise InputError(f"{path}:{lineno}: {e}") from None
                yield utt
        except UnicodeDecodeError:
            raise InputError(f"{path}:{lineno + 1}: not UTF-8 text") from None


def read_manifest(path: str | os.PathLike, *, require_words: bool = False) -> list[Utterance]:
    """All utterances of a manifest (validated; `require_words` also rejects lines without word times)."""
    return list(iter_manifest(path, require_words=require_words))


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> None:
    """Validate and write utterances as JSON Lines, atomically (a reader never sees a partial file)."""
    path = Path(path)
    lines = []
    for i, utt in enumerate(utts):
        try:
            utt.validate()
        except InputError as e:
            raise InputError(f"{path}: utterance {i} ({utt.audio!r}): {e}") from None
        lines.append(json.dumps(utt.to_json(), ensure_ascii=False) + "\n")
    if not path.parent.is_dir():
        raise InputError(f"{path}: cannot write, directory '{path.parent}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def manifest_root(path: str | os.PathLike) -> Path:
    """The directory that relative audio paths of the manifest at `path` are resolved against."""
    return Path(path).resolve().parent


def relative_audio_path(audio: str | os.PathLike, root: str | os.PathLike) -> str:
    """`audio` as an entry of a manifest in `root`: relative when it lies under root, else absolute."""
    audio, root = Path(audio).resolve(), Path(root).resolve()
    try:
        return audio.relative_to(root).as_posix()
    except ValueError:
        return str(audio)


def rebase(
    utts: Iterable[Utterance], old_root: str | os.PathLike, new_root: str | os.PathLike
) -> list[Utterance]:
    """Copies of `utts` whose audio paths (relative to `old_root`) are made relative to `new_root`."""
    return [replace(u, audio=relative_audio_path(u.audio_path(old_root), new_root)) for u in utts]
