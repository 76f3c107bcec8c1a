"""Aligned speech from text with espeak-ng (English, French and its other languages), through ctypes.

The library runs in synchronous mode with phoneme events: its callback receives the audio with WORD
events (1-based character position and length in the text), PHONEME events (IPA names; an empty name is a
pause) and SENTENCE/END events, each at an exact sample index. Word times come from those indices:

- a word starts at its first phoneme and ends where the next phoneme (or pause) starts;
- espeak merges unstressed function words into one WORD event ("in the"): such a group is split at
  phoneme boundaries in proportion to each word's phoneme count (`espeak_TextToPhonemes`);
- it also reports wrong positions now and then ("most of" gives "of" the position of "most"): an event
  that points back into the previous event's span is taken for the next word.

Numbers are written out before synthesis (so the transcript says what is spoken). Voices: a language
voice (`en-us`, `en`, `fr`, `fr-be`, ...) with an optional variant (`en-us+f3`, `fr+m2`), a rate (words
per minute) and a pitch. The library's state is process-global: it is initialised once per process and
every call is serialised by a lock.

Needs the shared library libespeak-ng (Debian: `apt-get install espeak-ng`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsm.errors import DsmError, InputError
from dsm.train.data.align import (
    AlignedSpeech,
    Phone,
    finish_words,
    is_spoken,
    speakable,
    split_group,
    spoken_text,
    tokens,
)
from dsm.train.data.numbers import LANGS

RATE_RANGE = (80, 450)  # words per minute, as the library accepts
PITCH_RANGE = (0, 100)

# espeak_EVENT_TYPE
_EV_LIST_TERMINATED, _EV_WORD, _EV_SENTENCE, _EV_END, _EV_MSG_TERMINATED, _EV_PHONEME = 0, 1, 2, 5, 6, 7
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA, _INIT_DONT_EXIT = 0x0001, 0x0002, 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 3, 4, 7
_EE_OK = 0
_BUFFER_MS = 500
# espeak_TextToPhonemes mode: IPA names, separated by "|".
_PHONEME_MODE = (ord("|") << 8) | 0x02


class EspeakMissing(DsmError):
    """libespeak-ng is not installed."""


class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _Id),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class _RawEvent:
    type: int
    position: int
    length: int
    sample: int
    name: str


@dataclass(frozen=True)
class EspeakVoice:
    """An espeak-ng speaker: voice name with optional `+variant`, rate (words/minute), pitch and pitch
    range (0-100), extra gap between words (units of 10 ms)."""

    name: str = "en-us"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0

    @property
    def language(self) -> str:
        """The language of the voice's name, "en" or "fr" (others keep their espeak name)."""
        base = self.name.split("+")[0].lower()
        return next((lang for lang in LANGS if base == lang or base.startswith(lang + "-")), base)

    def validate(self) -> None:
        for label, value, (low, high) in (
            ("rate", self.rate, RATE_RANGE),
            ("pitch", self.pitch, PITCH_RANGE),
            ("pitch range", self.pitch_range, PITCH_RANGE),
        ):
            if not isinstance(value, int) or not low <= value <= high:
                raise InputError(f"espeak-ng {label} must be an integer in {low}..{high}, got {value!r}")
        if not isinstance(self.word_gap, int) or not 0 <= self.word_gap <= 100:
            raise InputError(f"espeak-ng word gap must be an integer in 0..100, got {self.word_gap!r}")
        if not self.name or self.name.count("+") > 1:
            raise InputError(f"espeak-ng voice must look like 'en-us' or 'en-us+f3', got {self.name!r}")


class _Library:
    """libespeak-ng, initialised once per process; every method takes the lock."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            raise EspeakMissing(
                "libespeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)"
            ) from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        options = _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None, options)
        if rate <= 0:
            raise EspeakMissing("libespeak-ng failed to initialise (is its data directory installed?)")
        self.lib = lib
        self.sample_rate = int(rate)
        data = ctypes.c_char_p()
        self.version = (lib.espeak_Info(ctypes.byref(data)) or b"").decode()
        self.data_dir = Path((data.value or b"").decode())
        self.lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._events: list[_RawEvent] = []
        self._callback = _Callback(self._on_audio)  # kept alive as long as the library
        lib.espeak_SetSynthCallback(self._callback)
        self._variants: frozenset[str] | None = None

    def _on_audio(self, wav: Any, num_samples: int, events: Any) -> int:
        """The synthesis callback: collect audio samples and events (return 0 to go on)."""
        if num_samples > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        i = 0
        while events[i].type != _EV_LIST_TERMINATED:
            e = events[i]
            name = e.id.string.decode("utf-8", "replace") if e.type == _EV_PHONEME else ""
            self._events.append(_RawEvent(e.type, e.text_position, e.length, e.sample, name))
            i += 1
        return 0

    def variants(self) -> frozenset[str]:
        if self._variants is None:
            folder = self.data_dir / "voices" / "!v"
            self._variants = frozenset(p.name for p in folder.iterdir()) if folder.is_dir() else frozenset()
        return self._variants

    def set_voice(self, voice: EspeakVoice) -> None:
        """Select a voice and its parameters (lock held by the caller)."""
        voice.validate()
        base, _, variant = voice.name.partition("+")
        if variant and self.variants() and variant not in self.variants():
            raise InputError(
                f"espeak-ng has no voice variant {variant!r} (e.g. f1..f5, m1..m8; see `dsm data voices`)"
            )
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
            raise InputError(f"espeak-ng has no voice {base!r} (e.g. en-us, en, fr, fr-be)")
        for param, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_WORDGAP, voice.word_gap),
        ):
            self.lib.espeak_SetParameter(param, value, 0)

    def synth(self, text: str) -> tuple[np.ndarray, list[_RawEvent]]:
        """int16 samples and events for `text` in the current voice (lock held by the caller)."""
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise DsmError(f"espeak-ng failed to synthesise (error {status}): {text[:60]!r}")
        audio = np.frombuffer(b"".join(self._chunks), dtype=np.int16).copy()
        events, self._chunks, self._events = self._events, [], []
        return audio, events

    def phoneme_counts(self, words: list[str]) -> list[int]:
        """Number of phonemes of each word said alone, in the current voice (lock held by the caller)."""
        counts = []
        for word in words:
            buf = ctypes.c_char_p(word.encode("utf-8"))
            n = 0
            while buf.value:
                out = self.lib.espeak_TextToPhonemes(ctypes.byref(buf), _CHARS_UTF8, _PHONEME_MODE)
                n += sum(1 for p in (out or b"").decode("utf-8", "replace").replace(" ", "|").split("|") if p)
            counts.append(n)
        return counts


_LIBRARY: _Library | None = None
_INIT_LOCK = threading.Lock()


def _library() -> _Library:
    global _LIBRARY
    with _INIT_LOCK:
        if _LIBRARY is None:
            _LIBRARY = _Library()
        return _LIBRARY


def available() -> bool:
    """Whether libespeak-ng can be loaded."""
    try:
        _library()
    except EspeakMissing:
        return False
    return True


def variants() -> list[str]:
    """Names of the voice variants installed (append to a voice: `en-us+f3`)."""
    return sorted(_library().variants())


def sample_rate() -> int:
    """The rate espeak-ng synthesises at (22,050 Hz)."""
    return _library().sample_rate


def check_voice(voice: EspeakVoice | str) -> None:
    """Raise InputError unless the voice (and its variant and parameters) exists."""
    lib = _library()
    with lib.lock:
        lib.set_voice(_as_voice(voice))


def _as_voice(voice: EspeakVoice | str) -> EspeakVoice:
    return EspeakVoice(voice) if isinstance(voice, str) else voice


def phonemes(text: str, voice: EspeakVoice | str = "en-us") -> list[list[str]]:
    """IPA phonemes of each word of `text` said alone (for inspection and tests)."""
    voice = _as_voice(voice)
    lib = _library()
    out = []
    with lib.lock:
        lib.set_voice(voice)
        for word in tokens(spoken_text(text, voice.language)):
            buf = ctypes.c_char_p(word.encode("utf-8"))
            names: list[str] = []
            while buf.value:
                raw = lib.lib.espeak_TextToPhonemes(ctypes.byref(buf), _CHARS_UTF8, _PHONEME_MODE)
                names += [
                    p for p in (raw or b"").decode("utf-8", "replace").replace(" ", "|").split("|") if p
                ]
            out.append(names)
    return out


def synthesize(text: str, voice: EspeakVoice | str = "en-us") -> AlignedSpeech:
    """Speak `text` with espeak-ng; returns the audio (float32 at `sample_rate()`) and a timing for every
    word of the spoken text (numbers written out)."""
    voice = _as_voice(voice)
    spoken, words = speakable(text, voice.language)
    lib = _library()
    with lib.lock:
        lib.set_voice(voice)
        audio, events = lib.synth(spoken)
        groups = _group_words(spoken, words, events, len(audio))
        if not groups:
            raise DsmError(f"espeak-ng reported no spoken words for {spoken[:60]!r}")
        merged = [g for g in groups if len(g[0]) > 1]
        counts = lib.phoneme_counts([words[i] for g in merged for i in g[0]]) if merged else []
    spans: list[tuple[int, int] | None] = [None] * len(words)
    for indices, phones in groups:
        if len(indices) == 1:
            spans[indices[0]] = (phones[0].start, phones[-1].end)
        else:
            group_counts, counts = counts[: len(indices)], counts[len(indices) :]
            for i, span in zip(indices, split_group(phones, group_counts), strict=True):
                spans[i] = span
    timings = finish_words(words, spans, lib.sample_rate, len(audio))
    info = {"engine": "espeak-ng", "rate": voice.rate, "pitch": voice.pitch, "lang": voice.language}
    return AlignedSpeech(
        audio.astype(np.float32) / 32768.0, lib.sample_rate, spoken, timings, voice.name, info
    )


def _token_spans(text: str, words: list[str]) -> list[tuple[int, int]]:
    """1-based inclusive character spans of the whitespace tokens (as espeak counts positions)."""
    spans, at = [], 0
    for word in words:
        at = text.index(word, at)
        spans.append((at + 1, at + len(word)))
        at += len(word)
    return spans


def _group_words(
    text: str, words: list[str], events: list[_RawEvent], num_samples: int
) -> list[tuple[list[int], list[Phone]]]:
    """Spoken groups: the indices of the (spoken) words each WORD event covers, and its phones."""
    # Phones tile the timeline: each lasts until the next phoneme event (or pause) starts.
    phone_events = [e for e in events if e.type == _EV_PHONEME]
    ends = [e.sample for e in phone_events[1:]] + [num_samples]
    phone_of = {
        id(e): Phone(e.name, e.sample, max(e.sample, end)) for e, end in zip(phone_events, ends, strict=True)
    }
    segments: list[tuple[_RawEvent, list[Phone]]] = []
    for e in events:
        if e.type == _EV_WORD:
            segments.append((e, []))
        elif e.type == _EV_PHONEME and e.name and segments:
            segments[-1][1].append(phone_of[id(e)])
    spans = _token_spans(text, words)
    spoken = [i for i, w in enumerate(words) if is_spoken(w)]
    groups: list[tuple[list[int], list[Phone]]] = []
    last, prev_event = -1, None
    for event, phones in segments:
        if not phones:
            continue
        containing = next((k for k, i in enumerate(spoken) if spans[i][1] >= event.position), len(spoken) - 1)
        if containing > last:
            k = containing
        elif (
            containing == last
            and prev_event is not None
            and event.position >= prev_event.position + prev_event.length
        ):
            k = last  # a second event inside the same word ("l'" + "homme")
        else:
            k = last + 1  # a position pointing back into the previous word: the next word
        k = min(k, len(spoken) - 1)
        if groups and k == last:
            groups[-1][1].extend(phones)
        else:
            groups.append(([k], phones))
        last, prev_event = k, event
    # Spoken words no event started belong to the group before them (merged), or to the first group.
    for g, (first, _) in enumerate(groups):
        stop = groups[g + 1][0][0] if g + 1 < len(groups) else len(spoken)
        start = 0 if g == 0 else first[0]
        first[:] = list(range(start, stop))
    return [([spoken[k] for k in ks], phones) for ks, phones in groups]
