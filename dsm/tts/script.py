"""From text to the word entries a DSM TTS model consumes (model-spec §5.2).

A script is a list of turns, alternating between the main speaker and the other one (starting with the
main speaker; an empty first turn starts with the other). Each turn is split on whitespace and on
`<break time="1.5s"/>` tags: a word becomes an `Entry` holding its SentencePiece ids (the first word of
a turn gets the speaker token 1 or 2 when the speaker changes, on multi-speaker models), a break becomes
a pause entry of round(seconds * 12.5) steps. This follows the reference's `script_to_entries`, so a
script gives the same entries as there; `normalize_text` adds a few character clean-ups of its own.

`ScriptParser` does the same incrementally, for text that arrives piece by piece: only words known to
be complete (followed by whitespace, a tag, or the end of the input) are turned into entries.
`split_text` cuts a long text into chunks of whole sentences for separate synthesis.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dsm.errors import InputError

FRAME_RATE = 12.5
NEW_WORD = 0  # the model asks for the next word / the "new word" marker on the second stream
MAIN_SPEAKER = 1
OTHER_SPEAKER = 2
PAD = 3
ZERO = -1  # embeds to exactly zero
UNGENERATED = -2
_MAX_TAG = 64  # an unclosed '<' further back than this is plain text, not a break tag in transit

# The reference's pattern: a break tag (its decimal separator is an unescaped '.', and the closing '/'
# is optional) or a run of whitespace.
_EVENT = re.compile(r"(?:<break\s+time=\"([0-9]+(?:.[0-9]*)?)s\"\s*/?>)|(?:\s+)")
# Characters the reference rewrites before splitting.
_REFERENCE_MAP = str.maketrans({"\u2019": "'", ":": " ", "(": None, ")": None})
# Extra clean-ups (not in the reference): typographic quotes and dashes, invisible characters.
_EXTRA_MAP = str.maketrans(
    {
        "\u2018": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2013": "-",
        "\u2014": " - ",
        "\u2026": "...",
        "\u200b": None,
        "\u200c": None,
        "\u200d": None,
        "\u2060": None,
        "\ufeff": None,
        "\u00ad": None,
    }
)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass
class Entry:
    """One word (its token ids) or, with no tokens, a pause. `padding`: steps during which the model may
    not ask for the next word once this entry has been taken."""

    tokens: list[int]
    text: str
    padding: int = 0

    @property
    def is_pause(self) -> bool:
        return not self.tokens


def normalize_text(text: str, extra: bool = True) -> str:
    """The reference's rewrites (’ -> ', ':' -> space, parentheses dropped); with `extra`, also Unicode
    NFC, typographic quotes and dashes to ASCII, and invisible / control characters removed (newlines
    and tabs become spaces)."""
    if extra:
        text = unicodedata.normalize("NFC", text).translate(_EXTRA_MAP)
        text = "".join(
            " " if c in "\t\n\r\v\f" else c
            for c in text
            if c in "\t\n\r\v\f" or unicodedata.category(c) not in ("Cc", "Cf")
        )
    return text.translate(_REFERENCE_MAP)


def has_speech(text: str) -> bool:
    """Whether `text` holds anything pronounceable (a letter or digit outside break tags)."""
    return any(c.isalnum() for c in _EVENT.sub(" ", text))


@dataclass
class ScriptParser:
    """Turns a script into entries, possibly incrementally (`push` pieces, then `finish`).

    Usage: `ScriptParser(tokenizer).parse(["Hello there.", "Hi!"])`, or for streamed text
    `p.push("Hel")`, `p.push("lo wor")` (-> entries for "Hello"), `p.finish()` (-> "wor..." rest).
    `new_turn()` starts the next speaker's turn.
    """

    tokenizer: Tokenizer
    multi_speaker: bool = True
    padding_between: int = 1
    frame_rate: float = FRAME_RATE
    normalize: bool = True
    turn: int = 0  # index of the current turn (even: main speaker, odd: the other)
    _last_speaker: int | None = field(default=None, init=False, repr=False)
    _first_content: bool = field(default=True, init=False, repr=False)
    _buffer: str = field(default="", init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)

    def parse(self, script: str | Sequence[str]) -> list[Entry]:
        """All entries of a whole script (a string is a single turn)."""
        turns = [script] if isinstance(script, str) else list(script)
        if not turns:
            raise InputError("the script has no turns")
        entries: list[Entry] = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, str):
                raise InputError(f"turn {i} is a {type(turn).__name__}, expected a string")
            if i > 0:
                entries += self.new_turn()
            entries += self.push(turn)
        return entries + self.finish()

    def new_turn(self) -> list[Entry]:
        """End the current turn (its last word is complete) and switch speaker."""
        entries = self.finish() if self._started else []
        if self._started:
            self.turn += 1
        self._started = True
        self._first_content = True
        return entries

    def push(self, text: str) -> list[Entry]:
        """Add text to the current turn; returns the entries of the words completed so far."""
        self._started = True
        self._buffer += normalize_text(text, self.normalize)
        cut = self._safe_cut(self._buffer)
        head, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return self._entries(head)

    def finish(self) -> list[Entry]:
        """Flush the rest of the current turn (the last word is taken as complete)."""
        head, self._buffer = self._buffer, ""
        return self._entries(head)

    @staticmethod
    def _safe_cut(buffer: str) -> int:
        """Length of the prefix of `buffer` made of complete words and tags only."""
        limit = len(buffer)
        opening = buffer.rfind("<")
        if 0 <= opening and buffer.find(">", opening) < 0 and limit - opening <= _MAX_TAG:
            limit = opening  # a break tag may still be arriving: keep it (and what follows) for later
        cut = 0
        for match in _EVENT.finditer(buffer, 0, limit):
            cut = match.end()
        return cut

    def _entries(self, text: str) -> list[Entry]:
        entries: list[Entry] = []
        while text:
            match = _EVENT.search(text)
            if match is None:
                break
            word, text = text[: match.start()], text[match.end() :]
            if word:
                entries.append(self._word(word))
            if match.group(1):
                entries.append(Entry([], "", padding=_break_steps(match.group(1), self.frame_rate)))
        if text:
            entries.append(self._word(text))
        return entries

    def _word(self, word: str) -> Entry:
        tokens = list(self.tokenizer.encode(word))
        if self._first_content:
            speaker = self.turn % 2
            if self.multi_speaker and self._last_speaker != speaker:
                self._last_speaker = speaker
                tokens.insert(0, MAIN_SPEAKER if speaker == 0 else OTHER_SPEAKER)
            self._first_content = False
        padding = max(0, self.padding_between + len(tokens) - 1) if self.padding_between > 0 else 0
        return Entry(tokens, word, padding)


def _break_steps(value: str, frame_rate: float) -> int:
    try:
        seconds = float(value)
    except ValueError:
        raise InputError(f'invalid break duration "{value}s" (write e.g. <break time="1.5s"/>)') from None
    return int(round(seconds * frame_rate))


def script_entries(
    tokenizer: Tokenizer,
    script: str | Sequence[str],
    *,
    multi_speaker: bool = True,
    padding_between: int = 1,
    normalize: bool = True,
) -> list[Entry]:
    """Entries of a whole script; raises `InputError` when it holds nothing to say."""
    turns = [script] if isinstance(script, str) else list(script)
    if not any(isinstance(t, str) and has_speech(normalize_text(t, normalize)) for t in turns):
        if all(isinstance(t, str) and not t.strip() for t in turns):
            raise InputError("the text is empty: nothing to synthesize")
        raise InputError("the text has no words to speak (only punctuation, symbols or breaks)")
    parser = ScriptParser(tokenizer, multi_speaker, padding_between, normalize=normalize)
    return parser.parse(turns)


# -- long texts -----------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?;…])[\"')\]]*\s+|\n\s*\n")
_CLAUSE_END = re.compile(r"(?<=[,:—–-])\s+")


def split_text(text: str, max_words: int = 80) -> list[str]:
    """Cut `text` into chunks of at most `max_words` whitespace-separated words, at sentence ends when
    possible, else at clause ends (commas...), else between words. Break tags stay whole."""
    if max_words < 1:
        raise InputError(f"max_words must be at least 1, got {max_words}")
    protected = _protect_tags(text)
    sentences = [s for s in _split_keep(protected, _SENTENCE_END) if s.strip()]
    pieces: list[str] = []
    for sentence in sentences:
        if _count_words(sentence) <= max_words:
            pieces.append(sentence)
            continue
        for clause in _split_keep(sentence, _CLAUSE_END):
            words = clause.split()
            pieces += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for piece in pieces:
        n = _count_words(piece)
        if current and count + n > max_words:
            chunks.append(" ".join(current))
            current, count = [], 0
        current.append(piece.strip())
        count += n
    if current:
        chunks.append(" ".join(current))
    return [_restore_tags(c) for c in chunks if c.strip()]


_TAG = re.compile(r"<break\s+time=\"[^\"]*\"\s*/?>")
_SPACE_STANDIN = "\u0000"


def _protect_tags(text: str) -> str:
    return _TAG.sub(lambda m: re.sub(r"\s", _SPACE_STANDIN, m.group(0)), text)


def _restore_tags(text: str) -> str:
    return text.replace(_SPACE_STANDIN, " ")


def _split_keep(text: str, pattern: re.Pattern) -> list[str]:
    out, start = [], 0
    for match in pattern.finditer(text):
        out.append(text[start : match.start()] + match.group(0).rstrip())
        start = match.end()
    out.append(text[start:])
    return out


def _count_words(text: str) -> int:
    return len(text.split())
