"""Import common speech-corpus layouts into a manifest (word times only where an alignment exists).

Layouts:
- `librispeech`: `*.trans.txt` files (lines `ID TEXT`) next to `ID.flac`; the speaker is the ID's first
  dash-separated field.
- `ljspeech`: `metadata.csv` with `ID|text|normalized text` lines and `wavs/ID.wav`; the normalised text
  (numbers written out) is used when present.
- `csv`: a `.csv`/`.tsv`/`.txt` file of `path<sep>text[<sep>speaker]` lines, the separator being `|`, a tab
  or a comma (an optional header line is skipped); paths are relative to the file.
- `txt`: a directory tree of audio files, each with a same-named `.txt` (or `.lab`) transcript and,
  optionally, a Praat `.TextGrid` with a "words" tier (as the Montreal Forced Aligner writes) that gives
  word times; the speaker is the audio's folder name below the root.

Audio paths in the manifest are relative to its directory when the audio lies below it, else absolute.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from pathlib import Path

from dsm.audio import audio_info
from dsm.errors import DsmError, InputError
from dsm.train.data.manifest import Utterance, WordTiming, check_words, relative_audio_path

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
_HEADER_NAMES = {"path", "audio", "file", "filename", "wav", "audio_path", "audio_filepath"}
_SILENCE_LABELS = {"", "sil", "sp", "spn", "<eps>", "<sil>"}


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e


def _find_audio(base: Path) -> Path | None:
    """`base` if it is a file, else `base` with the first audio extension that exists."""
    if base.suffix.lower() in AUDIO_EXTENSIONS and base.is_file():
        return base
    for ext in AUDIO_EXTENSIONS:
        candidate = base.with_name(base.name + ext)
        if candidate.is_file():
            return candidate
    return None


def _utterance(
    audio: Path, text: str, root: Path, speaker: str = "", words: list[WordTiming] | None = None
) -> Utterance:
    try:
        duration = audio_info(audio).duration
    except DsmError as e:
        raise InputError(f"{audio}: cannot read the audio header ({e})") from None
    text = " ".join(text.split())
    if words is not None:
        try:
            check_words(words, duration)
        except InputError as e:
            raise InputError(f"{audio}: word alignment: {e}") from None
    return Utterance(
        audio=relative_audio_path(audio, root),
        text=text,
        words=words,
        speaker=speaker,
        duration=duration if duration > 0 else None,
    )


def _require_dir(src: Path) -> None:
    if not src.is_dir():
        raise InputError(f"{src}: not a directory")


def import_librispeech(src: Path, root: Path) -> list[Utterance]:
    """LibriSpeech-style: `SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt` with `ID TEXT` lines."""
    _require_dir(src)
    transcripts = sorted(src.rglob("*.trans.txt"))
    if not transcripts:
        raise InputError(f"{src}: no *.trans.txt transcripts found (not a LibriSpeech-style directory)")
    utts = []
    for trans in transcripts:
        for lineno, line in enumerate(_read_lines(trans), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = _find_audio(trans.parent / uid)
            if audio is None:
                raise InputError(f"{trans}:{lineno}: no audio file for {uid} ({uid}.flac, .wav...)")
            utts.append(_utterance(audio, text, root, speaker=uid.split("-")[0]))
    return utts


def import_ljspeech(src: Path, root: Path) -> list[Utterance]:
    """LJSpeech-style: `metadata.csv` (`ID|text|normalized text`) and `wavs/ID.wav`."""
    _require_dir(src)
    metadata = src / "metadata.csv"
    if not metadata.is_file():
        raise InputError(f"{src}: no metadata.csv (not an LJSpeech-style directory)")
    utts = []
    for lineno, line in enumerate(_read_lines(metadata), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2:
            raise InputError(f"{metadata}:{lineno}: expected ID|text|normalized text, got {line[:60]!r}")
        uid, text = fields[0].strip(), fields[1]
        if len(fields) > 2 and fields[2].strip():
            text = fields[2]
        audio = _find_audio(src / "wavs" / uid) or _find_audio(src / uid)
        if audio is None:
            raise InputError(f"{metadata}:{lineno}: no audio file wavs/{uid}.wav")
        utts.append(_utterance(audio, text, root, speaker=src.resolve().name))
    return utts


def _sniff_delimiter(line: str) -> str:
    for delim in ("|", "\t", ","):
        if delim in line:
            return delim
    raise InputError(f"cannot tell the separator of {line[:60]!r} (expected path|text, a tab or a comma)")


def import_csv(src: Path, root: Path) -> list[Utterance]:
    """A table of `path<sep>text[<sep>speaker]`, separator `|`, tab or comma, paths relative to the file."""
    if not src.is_file():
        raise InputError(f"{src}: table file not found")
    lines = _read_lines(src)
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise InputError(f"{src}: empty table")
    delim = _sniff_delimiter(first)
    utts = []
    quoting = csv.QUOTE_MINIMAL if delim == "," else csv.QUOTE_NONE
    rows = csv.reader(lines, delimiter=delim, quoting=quoting)
    for lineno, row in enumerate(rows, 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if lineno == 1 and row[0].strip().lower() in _HEADER_NAMES:
            continue
        if len(row) < 2:
            raise InputError(f"{src}:{lineno}: expected path{delim}text, got {delim.join(row)[:60]!r}")
        path = Path(row[0].strip()).expanduser()
        audio = _find_audio(path if path.is_absolute() else src.parent / path)
        if audio is None:
            raise InputError(f"{src}:{lineno}: audio file not found: {row[0].strip()}")
        speaker = row[2].strip() if len(row) > 2 else ""
        utts.append(_utterance(audio, row[1], root, speaker=speaker))
    return utts


def read_textgrid_words(path: Path) -> list[WordTiming]:
    """Word intervals of the "words" (or "word") interval tier of a Praat TextGrid (long text format);
    silence labels are dropped."""
    tiers: dict[str, list[WordTiming]] = {}
    name = None
    xmin = xmax = None
    in_interval = False
    for line in _read_lines(path):
        line = line.strip()
        if line.startswith("name ="):
            name = line.split("=", 1)[1].strip().strip('"').lower()
            tiers.setdefault(name, [])
        elif re.match(r"intervals \[\d+\]", line):
            in_interval, xmin, xmax = True, None, None
        elif in_interval and line.startswith("xmin ="):
            xmin = float(line.split("=", 1)[1])
        elif in_interval and line.startswith("xmax ="):
            xmax = float(line.split("=", 1)[1])
        elif in_interval and line.startswith("text =") and name is not None:
            label = line.split("=", 1)[1].strip()
            label = label[1:-1].replace('""', '"') if label.startswith('"') and label.endswith('"') else label
            if label.strip().lower() not in _SILENCE_LABELS and xmin is not None and xmax is not None:
                tiers[name].append(WordTiming(label.strip(), xmin, xmax))
            in_interval = False
    for tier in ("words", "word"):
        if tier in tiers:
            return tiers[tier]
    raise InputError(f"{path}: no 'words' interval tier (tiers: {', '.join(tiers) or 'none'})")


def import_text_pairs(src: Path, root: Path) -> list[Utterance]:
    """Audio files with same-named `.txt`/`.lab` transcripts (and optional `.TextGrid` word alignments)."""
    _require_dir(src)
    audios = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    utts = []
    for audio in audios:
        transcript = next(
            (t for t in (audio.with_suffix(".txt"), audio.with_suffix(".lab")) if t.is_file()), None
        )
        grid = audio.with_suffix(".TextGrid")
        words = read_textgrid_words(grid) if grid.is_file() else None
        if transcript is not None:
            text = " ".join(_read_lines(transcript))
        elif words is not None:
            text = " ".join(w.word for w in words)
        else:
            continue  # audio without a transcript (noise, music...): not an utterance
        parent = audio.parent.relative_to(src)
        speaker = parent.parts[0] if parent.parts else ""
        utts.append(_utterance(audio, text, root, speaker=speaker, words=words))
    if not utts:
        raise InputError(f"{src}: no audio file with a same-named .txt, .lab or .TextGrid transcript")
    return utts


LAYOUTS: dict[str, Callable[[Path, Path], list[Utterance]]] = {
    "librispeech": import_librispeech,
    "ljspeech": import_ljspeech,
    "csv": import_csv,
    "txt": import_text_pairs,
}


def import_corpus(layout: str, src: str | os.PathLike, manifest_dir: str | os.PathLike) -> list[Utterance]:
    """Utterances of the corpus at `src` in `layout`, audio paths relative to `manifest_dir`."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    src_path = Path(src).expanduser()
    if not src_path.exists():
        raise InputError(f"{src_path}: not found")
    return LAYOUTS[layout](src_path, Path(manifest_dir))
