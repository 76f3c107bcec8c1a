"""Aligned speech from text with Flite (CMU's Festival-lite), through ctypes: four English voices.

Flite's voices are statistical-parametric (`rms`, `slt`, `awb`: CMU ARCTIC speakers, US male, US female,
Scottish male) or diphone (`kal16`, US male): smoother and more speech-like than espeak-ng's formant
synthesis, so they add speaker variety to synthetic corpora. Synthesis builds an utterance whose
`Segment` relation holds every phone with its end time; each phone links (through the syllable
structure) to its word, and each word to the whitespace token of the text it came from
("forty-five" -> "forty" "five"). A token's time runs from the start of its first phone to the end of its
last, so the timings are exact.

Rate and pitch: a rate in words per minute maps to Flite's `duration_stretch` = 175 / rate; a pitch on
espeak-ng's 0-100 scale to `f0_shift` = 2 ** ((pitch - 50) / 100) (50: the voice's own pitch; `rms`
ignores it). Numbers are written out before synthesis (so the transcript says what is spoken).

Needs the shared libraries libflite and its voices (Debian: `apt-get install flite`). The library's state
is process-global: every call is serialised by a lock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsm.errors import DsmError, InputError
from dsm.train.data.align import AlignedSpeech, finish_words, speakable

VOICES = ("rms", "slt", "awb", "kal16")
RATE_RANGE = (80, 450)  # words per minute, as espeak-ng accepts
PITCH_RANGE = (0, 100)
DEFAULT_RATE = 175
INSTALL_HINT = "apt-get install flite"
_TOKEN_OF_PHONE = "R:SylStructure.parent.parent.R:Token.parent"


class FliteMissing(DsmError):
    """libflite (or one of its voices) is not installed."""


class _Wave(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_char_p),
        ("sample_rate", ctypes.c_int),
        ("num_samples", ctypes.c_int),
        ("num_channels", ctypes.c_int),
        ("samples", ctypes.POINTER(ctypes.c_short)),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("features", ctypes.c_void_p)]


@dataclass(frozen=True)
class FliteVoice:
    """A Flite speaker: one of `VOICES`, a rate (words per minute) and a pitch (0-100, 50 = the voice's)."""

    name: str = "rms"
    rate: int = DEFAULT_RATE
    pitch: int = 50

    @property
    def speaker(self) -> str:
        """Speaker id for manifests: "flite:<voice>"."""
        return f"flite:{self.name}"

    def validate(self) -> None:
        if self.name not in VOICES:
            raise InputError(f"Flite has no voice {self.name!r} (one of {', '.join(VOICES)})")
        for label, value, (low, high) in (
            ("rate", self.rate, RATE_RANGE),
            ("pitch", self.pitch, PITCH_RANGE),
        ):
            if not isinstance(value, int) or not low <= value <= high:
                raise InputError(f"Flite {label} must be an integer in {low}..{high}, got {value!r}")


def _load(name: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name) or f"lib{name}.so.1"
    try:
        return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        raise FliteMissing(f"lib{name} is not installed (Debian/Ubuntu: {INSTALL_HINT})") from None


class _Library:
    """libflite with its English voices, initialised once per process; callers hold the lock."""

    def __init__(self) -> None:
        lib = _load("flite")
        for dep in ("flite_usenglish", "flite_cmulex"):
            _load(dep)
        lib.flite_init.restype = ctypes.c_int
        lib.flite_synth_text.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        lib.flite_synth_text.restype = ctypes.c_void_p
        lib.utt_wave.argtypes = [ctypes.c_void_p]
        lib.utt_wave.restype = ctypes.POINTER(_Wave)
        lib.utt_relation.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.utt_relation.restype = ctypes.c_void_p
        lib.relation_head.argtypes = [ctypes.c_void_p]
        lib.relation_head.restype = ctypes.c_void_p
        lib.item_next.argtypes = [ctypes.c_void_p]
        lib.item_next.restype = ctypes.c_void_p
        lib.ffeature_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.ffeature_float.restype = ctypes.c_float
        lib.path_to_item.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.path_to_item.restype = ctypes.c_void_p
        lib.feat_set_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
        lib.delete_utterance.argtypes = [ctypes.c_void_p]
        lib.flite_init()
        self.lib = lib
        self.lock = threading.Lock()
        self._voices: dict[str, Any] = {}  # name -> cst_voice pointer

    def voice(self, name: str) -> Any:
        """The registered cst_voice of `name` (a ctypes pointer to _Voice), loaded on first use."""
        if name not in self._voices:
            vox = _load(f"flite_cmu_us_{name}")
            register = getattr(vox, f"register_cmu_us_{name}")
            register.argtypes = [ctypes.c_char_p]
            register.restype = ctypes.POINTER(_Voice)
            voice = register(None)
            if not voice:
                raise FliteMissing(f"Flite failed to load its voice {name!r}")
            self._voices[name] = voice
        return self._voices[name]

    def synth(self, text: str, voice: FliteVoice) -> tuple[np.ndarray, int, int, list[tuple[int, float]]]:
        """int16 samples, sample rate, number of tokens and (token index, end time) of every phone;
        token -1 is a pause."""
        handle = self.voice(voice.name)
        features = handle.contents.features
        self.lib.feat_set_float(features, b"duration_stretch", DEFAULT_RATE / voice.rate)
        self.lib.feat_set_float(features, b"f0_shift", 2.0 ** ((voice.pitch - 50) / 100))
        utt = self.lib.flite_synth_text(text.encode("utf-8"), handle)
        if not utt:
            raise DsmError(f"Flite failed to synthesise: {text[:60]!r}")
        try:
            wave = self.lib.utt_wave(utt).contents
            audio = np.ctypeslib.as_array(wave.samples, (wave.num_samples * wave.num_channels,))
            audio = audio[:: wave.num_channels].astype(np.int16)
            token_index: dict[int, int] = {}
            token = self.lib.relation_head(self.lib.utt_relation(utt, b"Token"))
            while token:
                token_index[token] = len(token_index)
                token = self.lib.item_next(token)
            phones = []
            seg = self.lib.relation_head(self.lib.utt_relation(utt, b"Segment"))
            while seg:
                owner = self.lib.path_to_item(seg, _TOKEN_OF_PHONE.encode())
                end = float(self.lib.ffeature_float(seg, b"end"))
                phones.append((token_index.get(owner, -1) if owner else -1, end))
                seg = self.lib.item_next(seg)
            return audio, int(wave.sample_rate), len(token_index), phones
        finally:
            self.lib.delete_utterance(utt)


@functools.cache
def _library() -> _Library:
    return _Library()


def available() -> bool:
    """Whether libflite and its English voices can be loaded."""
    try:
        for name in VOICES:
            check_voice(name)
    except FliteMissing:
        return False
    return True


def check_voice(voice: FliteVoice | str) -> None:
    """Raise InputError (or FliteMissing) unless the voice and its parameters exist."""
    voice = FliteVoice(voice) if isinstance(voice, str) else voice
    voice.validate()
    lib = _library()
    with lib.lock:
        lib.voice(voice.name)


def synthesize(text: str, voice: FliteVoice | str = "rms") -> AlignedSpeech:
    """Speak `text` with Flite; returns the audio (float32 at the voice's rate, 16 kHz) and a timing for
    every word of the spoken text (numbers written out)."""
    voice = FliteVoice(voice) if isinstance(voice, str) else voice
    voice.validate()
    spoken, words = speakable(text, "en")
    lib = _library()
    with lib.lock:
        audio, sample_rate, num_tokens, phones = lib.synth(spoken, voice)
    if num_tokens != len(words):
        raise DsmError(f"Flite's tokens do not match the text's words: {spoken[:60]!r}")
    spans = _token_spans(phones, num_tokens, sample_rate)
    if not any(spans):
        raise DsmError(f"Flite reported no spoken words for {spoken[:60]!r}")
    timings = finish_words(words, spans, sample_rate, len(audio))
    info = {"engine": "flite", "rate": voice.rate, "pitch": voice.pitch, "lang": "en"}
    return AlignedSpeech(
        audio.astype(np.float32) / 32768.0, sample_rate, spoken, timings, voice.speaker, info
    )


def _token_spans(
    phones: list[tuple[int, float]], num_tokens: int, sample_rate: int
) -> list[tuple[int, int] | None]:
    """Sample span of each token from its phones (start: the previous phone's end); None for a token
    without phones."""
    spans: list[tuple[int, int] | None] = [None] * num_tokens
    start = 0.0
    for token, end in phones:
        if token >= 0:
            first = spans[token]
            spans[token] = (first[0] if first else round(start * sample_rate), round(end * sample_rate))
        start = end
    return spans
