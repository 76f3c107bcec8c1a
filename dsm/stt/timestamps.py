"""Word timestamps from DSM STT text tokens.

STT text-token semantics (one token per 12.5 Hz step): 3 = padding (no new text), 0 = "end of padding"
(emitted on the step just before a word's pieces start, i.e. a word boundary), 1/2 = BOS/EOS, ids > 3 are
SentencePiece pieces.

Two recipes are provided:

- :func:`words_from_tokens`: the offline recipe of the DSM scripts (``tokens_to_timestamped_text``), which
  sees the whole token sequence and gives each word a (start, end) pair.
- :class:`WordStream`: the incremental recipe of the Rust server (``moshi-core/src/asr.rs``), which emits
  :class:`WordStarted` when a word is complete and :class:`WordEnded` at the next boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "TextTokenizer",
    "Word",
    "WordEnded",
    "WordEvent",
    "WordStarted",
    "WordStream",
    "transcript_text",
    "words_from_tokens",
]

FRAME_RATE = 12.5
PADDING_ID = 3
END_OF_PADDING_ID = 0


class TextTokenizer(Protocol):
    """What the timestamp code needs from a tokenizer; ``sentencepiece.SentencePieceProcessor`` fits."""

    def decode(self, ids: list[int]) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def eos_id(self) -> int: ...


@dataclass(frozen=True)
class Word:
    """A word with its start and end time in seconds (relative to the start of the real audio)."""

    text: str
    start: float
    end: float


def _as_int_list(tokens: Sequence[int] | Any) -> list[int]:
    """Tokens as a flat list of ints; accepts lists, 1-D tensors/arrays (``tolist``)."""
    if hasattr(tokens, "tolist"):
        tokens = tokens.tolist()
    out = []
    for t in tokens:
        if isinstance(t, (list, tuple)):
            raise ValueError("expected a 1-D sequence of token ids")
        out.append(int(t))
    return out


def _decode_text(tokenizer: TextTokenizer, tokens: Sequence[int], padding_id: int) -> str:
    return tokenizer.decode([t for t in tokens if t > padding_id])


def transcript_text(tokens: Sequence[int], tokenizer: TextTokenizer, padding_id: int = PADDING_ID) -> str:
    """The DSM scripts' transcript: ``tokenizer.decode`` of the tokens greater than ``padding_id``."""
    return _decode_text(tokenizer, _as_int_list(tokens), padding_id)


def words_from_tokens(
    tokens: Sequence[int],
    tokenizer: TextTokenizer,
    *,
    prefix_chunks: int,
    audio_delay_seconds: float,
    frame_rate: float = FRAME_RATE,
    padding_id: int = PADDING_ID,
    end_of_padding_id: int = END_OF_PADDING_ID,
    last_segment_max_steps: int | None = None,
) -> list[Word]:
    """Timestamped words from per-step STT tokens, as the DSM scripts' ``tokens_to_timestamped_text``.

    ``tokens[i]`` is the token of step ``i``, counting the prefix silence from step 0. With
    ``offset_s = int(prefix_chunks / frame_rate) + audio_delay_seconds`` (``int`` truncates, as upstream:
    13 chunks at 12.5 Hz give 1 s, not 1.04 s), ``time(i) = max(0, i / frame_rate - offset_s)``.

    Segments lie between consecutive ``end_of_padding_id`` tokens: ``[b_j + 1, b_{j+1})``. The tokens
    ``> padding_id`` of a segment are decoded and split on whitespace; a single word gets
    ``(time(start), time(end))``; with several words each non-last word takes ``len(tokenizer.encode(w))``
    steps consecutively from the segment start (not clamped to the segment), the last runs to the segment
    end. The last segment starts after the last boundary and ends at the first ``tokenizer.eos_id()`` after
    it, else at ``min(len(tokens), start + last_segment_max_steps)``.

    Upstream adds the float ``frame_rate`` (12.5) to an index there, which cannot slice; the intended cap is
    "about one second". ``last_segment_max_steps`` defaults to ``int(frame_rate)`` = 12 steps (0.96 s), the
    largest whole number of steps not exceeding one second. No boundary at all gives ``[]``.
    """
    toks = _as_int_list(tokens)
    if last_segment_max_steps is None:
        last_segment_max_steps = int(frame_rate)
    offset_s = int(prefix_chunks / frame_rate) + audio_delay_seconds

    def time(i: int) -> float:
        return max(0.0, i / frame_rate - offset_s)

    words: list[Word] = []

    def decode_segment(start: int, end: int) -> None:
        parts = _decode_text(tokenizer, toks[start:end], padding_id).split()
        if not parts:
            return
        if len(parts) == 1:
            words.append(Word(parts[0], time(start), time(end)))
            return
        for part in parts[:-1]:
            n = len(tokenizer.encode(part))
            words.append(Word(part, time(start), time(start + n)))
            start += n
        words.append(Word(parts[-1], time(start), time(end)))

    boundaries = [i for i, t in enumerate(toks) if t == end_of_padding_id]
    if not boundaries:
        return []
    for b0, b1 in zip(boundaries[:-1], boundaries[1:], strict=True):
        decode_segment(b0 + 1, b1)

    last_start = boundaries[-1] + 1
    eos = tokenizer.eos_id()
    last_end = next((i for i in range(last_start, len(toks)) if toks[i] == eos), None)
    if last_end is None:
        last_end = min(len(toks), last_start + last_segment_max_steps)
    decode_segment(last_start, last_end)
    return words


@dataclass(frozen=True)
class WordStarted:
    """Rust ``AsrMsg::Word``: a complete word, emitted when a 0 or 3 token follows its pieces.

    ``start_time`` is the stop time of the last boundary seen before the word was emitted (0.0 if none).
    ``tokens`` are the raw accumulated ids (any id other than 0 and 3, so 1 and 2 too); ``text`` decodes
    those greater than 3.
    """

    text: str
    start_time: float
    tokens: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class WordEnded:
    """Rust ``AsrMsg::EndWord``: the end of the last emitted word(s), at the next 0 token."""

    stop_time: float


WordEvent = WordStarted | WordEnded


class WordStream:
    """Incremental words from STT tokens, following the Rust server (``moshi-core/src/asr.rs``).

    For each token y, the 1-based step count n is incremented; tokens with ``n < asr_delay_in_tokens`` are
    ignored. Otherwise, in this order:

    1. if y is 0 or 3 and word tokens are pending: emit :class:`WordStarted` (``start_time =
       last_stop_time``) and mark the word unended; else if y is neither 0 nor 3: append y to the word;
    2. if y is 0: ``stop = (n - asr_delay_in_tokens) / frame_rate``; if a word is unended emit
       :class:`WordEnded` (``stop``) and clear the mark; then ``last_stop_time = stop``.

    Use ``asr_delay_in_tokens`` 6 for stt-1b-en_fr and 32 for stt-2.6b-en (the Rust configs).
    """

    def __init__(
        self,
        asr_delay_in_tokens: int,
        tokenizer: TextTokenizer,
        *,
        frame_rate: float = FRAME_RATE,
        padding_id: int = PADDING_ID,
        end_of_padding_id: int = END_OF_PADDING_ID,
    ) -> None:
        if asr_delay_in_tokens < 0:
            raise ValueError(f"asr_delay_in_tokens must be >= 0, got {asr_delay_in_tokens}")
        self.asr_delay_in_tokens = asr_delay_in_tokens
        self.tokenizer = tokenizer
        self.frame_rate = frame_rate
        self.padding_id = padding_id
        self.end_of_padding_id = end_of_padding_id
        self.reset()

    def reset(self) -> None:
        """Forget everything, as a new stream."""
        self.step = 0  # n: tokens pushed so far
        self.last_stop_time = 0.0
        self._word_tokens: list[int] = []
        self._unended = False

    @property
    def pending_tokens(self) -> tuple[int, ...]:
        """Tokens of the word being accumulated (not yet emitted)."""
        return tuple(self._word_tokens)

    def _emit_word(self) -> WordStarted:
        toks = tuple(self._word_tokens)
        self._word_tokens = []
        self._unended = True
        text = _decode_text(self.tokenizer, toks, self.padding_id)
        return WordStarted(text, self.last_stop_time, toks)

    def push(self, token: int) -> list[WordEvent]:
        """Feed the token sampled at the next step; return the events it triggers (possibly none)."""
        token = int(token)
        self.step += 1
        events: list[WordEvent] = []
        if self.step < self.asr_delay_in_tokens:
            return events
        if token in (self.end_of_padding_id, self.padding_id):
            if self._word_tokens:
                events.append(self._emit_word())
        else:
            self._word_tokens.append(token)
        if token == self.end_of_padding_id:
            stop = (self.step - self.asr_delay_in_tokens) / self.frame_rate
            if self._unended:
                self._unended = False
                events.append(WordEnded(stop))
            self.last_stop_time = stop
        return events

    def push_many(self, tokens: Sequence[int]) -> list[WordEvent]:
        """:meth:`push` each token in turn; the concatenated events."""
        events: list[WordEvent] = []
        for t in _as_int_list(tokens):
            events.extend(self.push(t))
        return events

    def flush(self, stop_time: float | None = None) -> list[WordEvent]:
        """End of stream: emit the pending word, if any (the Rust server has no such step).

        With ``stop_time`` given, also emit :class:`WordEnded` (``stop_time``) if a word is unended (an
        extension: the stream itself gives no end for a word that no 0 token followed).
        """
        events: list[WordEvent] = []
        if self._word_tokens:
            events.append(self._emit_word())
        if stop_time is not None and self._unended:
            self._unended = False
            events.append(WordEnded(stop_time))
        return events
