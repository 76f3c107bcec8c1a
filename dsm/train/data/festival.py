"""Aligned speech from text with the Festival speech synthesis system: three English voices.

Voices (Debian packages): `slt` (CMU ARCTIC US female, HTS statistical-parametric,
`festvox-us-slt-hts`), `kal` and `ked` (US male diphone voices, `festvox-kallpc16k`,
`festvox-kdlpc16k`). Festival runs as one long-lived `festival --pipe` process per Python process, driven
by a small Scheme function that synthesises a sentence, saves the wave and prints, for every whitespace
token of the text, the start and end of each of its words (from the segments under the word's syllables;
a word starts where the segment before its first one ends). A token's time runs from its first word's
start to its last word's end, so the timings are Festival's own.

Rate: words per minute map to Festival's `Duration_Stretch` = 175 / rate. Pitch is not controlled (the
voices differ in how they model it). Numbers are written out before synthesis.

Needs the `festival` program and the voices (Debian: `apt-get install festival festvox-us-slt-hts
festvox-kallpc16k festvox-kdlpc16k`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from dsm.errors import DsmError, InputError
from dsm.train.data.align import AlignedSpeech, finish_words, speakable

VOICES = {"slt": "cmu_us_slt_arctic_hts", "kal": "kal_diphone", "ked": "ked_diphone"}
RATE_RANGE = (80, 450)  # words per minute, as espeak-ng accepts
DEFAULT_RATE = 175
INSTALL_HINT = "apt-get install festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k"

# Prints "T start end [start end ...]" per token (one pair per spoken word), then END; ERR on an error
# (each call is followed by a flush: festival's output is block-buffered into a pipe).
_SCHEME = r"""
(define (dsm_say text out)
  (let ((u (utt.synth (eval (list 'Utterance 'Text text)))))
    (utt.save.wave u out 'riff)
    (let ((tok (utt.relation.first u 'Token)))
      (while tok
        (format t "T")
        (mapcar
         (lambda (w)
           (if (item.relation.daughters w 'SylStructure)
               (format t " %f %f"
                 (item.feat w "R:SylStructure.daughter1.daughter1.R:Segment.p.end")
                 (item.feat w "R:SylStructure.daughtern.daughtern.end"))))
         (item.daughters tok))
        (format t "\n")
        (set! tok (item.next tok))))
    (format t "END\n")))
(define (dsm_voice name)
  (eval (list (intern (string-append "voice_" name))))
  (format t "END\n"))
(define (dsm_stretch stretch)
  (Parameter.set 'Duration_Stretch stretch)
  (format t "END\n"))
"""


class FestivalMissing(DsmError):
    """The festival program (or one of its voices) is not installed."""


@dataclass(frozen=True)
class FestivalVoice:
    """A Festival speaker: one of `VOICES` and a rate in words per minute."""

    name: str = "slt"
    rate: int = DEFAULT_RATE

    @property
    def speaker(self) -> str:
        """Speaker id for manifests: "festival:<voice>"."""
        return f"festival:{self.name}"

    def validate(self) -> None:
        if self.name not in VOICES:
            raise InputError(f"Festival has no voice {self.name!r} (one of {', '.join(VOICES)})")
        low, high = RATE_RANGE
        if not isinstance(self.rate, int) or not low <= self.rate <= high:
            raise InputError(f"Festival rate must be an integer in {low}..{high}, got {self.rate!r}")


class _Process:
    """One `festival --pipe` process with the Scheme helpers loaded; callers hold the lock."""

    def __init__(self) -> None:
        program = shutil.which("festival")
        if program is None:
            raise FestivalMissing(f"festival is not installed (Debian/Ubuntu: {INSTALL_HINT})")
        self.proc = subprocess.Popen(
            [program, "--pipe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.lock = threading.Lock()
        self.tmp = tempfile.TemporaryDirectory(prefix="dsm-festival-")
        self.voice: str | None = None  # the voice loaded, and the rate it speaks at
        self.rate: int | None = None
        self._send(_SCHEME)

    def _send(self, scheme: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(scheme + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise DsmError("festival exited unexpectedly") from None

    def _call(self, scheme: str, what: str) -> list[str]:
        """Run one guarded call; the lines it printed before END."""
        self._send(f'(unwind-protect {scheme} (format t "ERR\\n"))\n(fflush nil)')
        assert self.proc.stdout is not None
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise DsmError(f"festival exited unexpectedly while {what}")
            line = line.strip()
            if line == "END":
                return lines
            if line.endswith("ERR"):
                raise DsmError(f"festival failed while {what}")
            if line.startswith("T"):
                lines.append(line)

    def set_voice(self, voice: FestivalVoice) -> None:
        """Load the voice unless it is loaded (the costly part), then set its rate unless it is set."""
        if self.voice != voice.name:
            try:
                self._call(f'(dsm_voice "{VOICES[voice.name]}")', f"loading voice {voice.name!r}")
            except DsmError:
                raise FestivalMissing(
                    f"Festival's voice {voice.name!r} is not installed ({INSTALL_HINT})"
                ) from None
            self.voice, self.rate = voice.name, None
        if self.rate != voice.rate:
            self._call(f"(dsm_stretch {DEFAULT_RATE / voice.rate:.6f})", f"setting the rate {voice.rate}")
            self.rate = voice.rate

    def synth(self, text: str) -> tuple[np.ndarray, int, list[list[float]]]:
        """float32 samples, sample rate and each token's word (start, end) times, flattened."""
        path = Path(self.tmp.name) / "say.wav"
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        lines = self._call(f'(dsm_say "{quoted}" "{path}")', f"saying {text[:60]!r}")
        audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
        return audio[:, 0], int(sample_rate), [[float(x) for x in line.split()[1:]] for line in lines]


_PROCESS: _Process | None = None
_INIT_LOCK = threading.Lock()


def _process() -> _Process:
    global _PROCESS
    with _INIT_LOCK:
        if _PROCESS is None or _PROCESS.proc.poll() is not None:
            _PROCESS = _Process()
        return _PROCESS


def available() -> bool:
    """Whether festival and its three English voices can be loaded."""
    try:
        for name in VOICES:
            check_voice(name)
    except DsmError:  # FestivalMissing, or festival failing to start
        return False
    return True


def check_voice(voice: FestivalVoice | str) -> None:
    """Raise InputError (or FestivalMissing) unless the voice and its rate exist."""
    voice = FestivalVoice(voice) if isinstance(voice, str) else voice
    voice.validate()
    proc = _process()
    with proc.lock:
        proc.set_voice(voice)


def synthesize(text: str, voice: FestivalVoice | str = "slt") -> AlignedSpeech:
    """Speak `text` with Festival; returns the audio (float32 at the voice's rate: 32 kHz for `slt`,
    16 kHz for the others) and a timing for every word of the spoken text (numbers written out)."""
    voice = FestivalVoice(voice) if isinstance(voice, str) else voice
    voice.validate()
    spoken, words = speakable(text, "en")
    proc = _process()
    with proc.lock:
        proc.set_voice(voice)
        audio, sample_rate, times = proc.synth(spoken)
    if len(times) != len(words):
        raise DsmError(f"Festival's tokens do not match the text's words: {spoken[:60]!r}")
    spans = [(round(t[0] * sample_rate), round(t[-1] * sample_rate)) if t else None for t in times]
    if not any(spans):
        raise DsmError(f"Festival reported no spoken words for {spoken[:60]!r}")
    timings = finish_words(words, spans, sample_rate, len(audio))
    info = {"engine": "festival", "rate": voice.rate, "lang": "en"}
    return AlignedSpeech(audio, sample_rate, spoken, timings, voice.speaker, info)
