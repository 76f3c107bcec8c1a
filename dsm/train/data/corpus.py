"""Generate an aligned speech corpus: sentences x voices x rates x pitches, spoken by espeak-ng, Flite,
Festival or Piper,
resampled (24 kHz by default, Mimi's rate), padded with a little silence, written as 16-bit WAV files
under `OUT/clips/` with `OUT/manifest.jsonl`.

Voices are espeak-ng names (`en-us`, `en-us+f3`, `fr+m2`), `flite:NAME` (`flite:rms`, `flite:slt`,
`flite:awb`, `flite:kal16`), `festival:NAME` (`festival:slt`, `festival:kal`, `festival:ked`), `piper`
(the default Piper voice) or `piper:PATH.onnx`. For Piper, a rate in words per minute maps to a speed of
rate / 175; Piper and Festival ignore the pitch.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsm.audio import encode_audio
from dsm.errors import InputError
from dsm.train.data import espeak, festival, flite, piper
from dsm.train.data.align import AlignedSpeech
from dsm.train.data.manifest import Utterance, write_manifest

MANIFEST_NAME = "manifest.jsonl"
DEFAULT_RATE = 175
PAD_SECONDS = (0.1, 0.4)  # silence drawn uniformly before and after each utterance


@dataclass(frozen=True)
class VoiceSpec:
    """A voice of the corpus: engine ("espeak" or "piper") and name (espeak voice, or Piper model path,
    "" for the default Piper voice)."""

    engine: str
    name: str

    @classmethod
    def parse(cls, text: str) -> VoiceSpec:
        text = text.strip()
        if text == "piper":
            return cls("piper", "")
        if text.startswith("piper:"):
            return cls("piper", text[len("piper:") :])
        for engine in ("flite", "festival"):
            if text.startswith(engine + ":"):
                return cls(engine, text[len(engine) + 1 :])
        if not text:
            raise InputError("empty voice name")
        return cls("espeak", text)

    @property
    def label(self) -> str:
        """The voice as given on the command line."""
        if self.engine == "espeak":
            return self.name
        return f"{self.engine}:{self.name}" if self.name else self.engine

    @property
    def language(self) -> str | None:
        if self.engine == "espeak":
            return espeak.EspeakVoice(self.name).language
        # Flite's and Festival's voices and the default Piper voice speak English
        return "en" if self.engine in ("flite", "festival") or not self.name else None


@dataclass(frozen=True)
class Job:
    """One utterance to render."""

    index: int
    sentence: int
    text: str
    voice: VoiceSpec
    rate: int
    pitch: int
    path: str  # the output WAV file
    seed: int


@dataclass(frozen=True)
class CorpusReport:
    utterances: int
    audio_seconds: float
    wall_seconds: float

    @property
    def speed(self) -> float:
        """Seconds of audio generated per second of wall time."""
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


def check_voices(voices: Sequence[VoiceSpec], lang: str | None) -> None:
    """Raise InputError for a voice that does not exist or does not speak `lang`."""
    for voice in voices:
        if lang is not None and voice.language is not None and voice.language != lang:
            raise InputError(
                f"voice {voice.label!r} speaks {voice.language!r}, but the sentences are {lang!r}"
            )
        if voice.engine == "espeak":
            espeak.check_voice(espeak.EspeakVoice(voice.name))
        elif voice.engine == "flite":
            flite.check_voice(voice.name)
        elif voice.engine == "festival":
            festival.check_voice(voice.name)
        elif not voice.name and not piper.available():
            raise piper.PiperMissing(f"the 'piper' voice needs Piper: {piper.INSTALL_HINT}")


def plan(
    sentences: Sequence[str],
    voices: Sequence[VoiceSpec],
    out_dir: Path,
    rates: Sequence[int] = (DEFAULT_RATE,),
    pitches: Sequence[int] = (50,),
    combos_per_sentence: int | None = None,
    seed: int = 0,
) -> list[Job]:
    """The jobs of a corpus: every (voice, rate, pitch) for every sentence, or `combos_per_sentence` of them
    drawn at random for each sentence."""
    if not sentences:
        raise InputError("no sentences to speak")
    if not voices or not rates or not pitches:
        raise InputError("need at least one voice, one rate and one pitch")
    combos = list(itertools.product(voices, rates, pitches))
    if combos_per_sentence is not None and not 1 <= combos_per_sentence:
        raise InputError(f"combinations per sentence must be >= 1, got {combos_per_sentence}")
    rng = random.Random(seed)
    jobs = []
    for s, text in enumerate(sentences):
        chosen = combos
        if combos_per_sentence is not None and combos_per_sentence < len(combos):
            chosen = rng.sample(combos, combos_per_sentence)
        for voice, rate, pitch in chosen:
            i = len(jobs)
            path = out_dir / "clips" / f"{i // 1000:03d}" / f"{i:06d}.wav"
            jobs.append(Job(i, s, text, voice, rate, pitch, str(path), seed * 1_000_003 + i))
    return jobs


def speak(job: Job) -> AlignedSpeech:
    """Synthesise one job's sentence in its voice (native sample rate)."""
    if job.voice.engine == "espeak":
        return espeak.synthesize(job.text, espeak.EspeakVoice(job.voice.name, rate=job.rate, pitch=job.pitch))
    if job.voice.engine == "flite":
        return flite.synthesize(job.text, flite.FliteVoice(job.voice.name, rate=job.rate, pitch=job.pitch))
    if job.voice.engine == "festival":
        return festival.synthesize(job.text, festival.FestivalVoice(job.voice.name, rate=job.rate))
    voice = piper.PiperVoice(model=job.voice.name or None, speed=job.rate / DEFAULT_RATE)
    return piper.synthesize(job.text, voice)


def render(job: Job, sample_rate: int, root: str, pad: tuple[float, float] = PAD_SECONDS) -> Utterance:
    """Synthesise, resample, pad and write one job; returns its manifest entry (audio relative to root)."""
    rng = np.random.default_rng(job.seed)
    speech = speak(job).resampled(sample_rate)
    speech = speech.padded(float(rng.uniform(*pad)), float(rng.uniform(*pad)))
    path = Path(job.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Encoded in memory: soundfile's own file writer syncs each file to disk, which is slow.
    path.write_bytes(encode_audio(np.clip(speech.audio, -1.0, 1.0), sample_rate, "wav"))
    extra = {**speech.info, "sentence": job.sentence}  # espeak-ng, Flite, Festival: rate (and pitch)
    return Utterance(
        audio=os.path.relpath(path, root),
        text=speech.text,
        words=speech.words,
        speaker=speech.speaker,
        duration=speech.duration,
        extra=extra,
    )


def _render_batch(jobs: list[Job], sample_rate: int, root: str) -> list[Utterance]:
    return [render(job, sample_rate, root) for job in jobs]


def generate_corpus(
    out_dir: str | os.PathLike,
    sentences: Sequence[str],
    voices: Sequence[str | VoiceSpec],
    rates: Sequence[int] = (DEFAULT_RATE,),
    pitches: Sequence[int] = (50,),
    *,
    lang: str | None = None,
    sample_rate: int = 24000,
    combos_per_sentence: int | None = None,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> CorpusReport:
    """Speak every sentence in the chosen voices, rates and pitches; write the clips and the manifest."""
    out = Path(out_dir)
    manifest = out / MANIFEST_NAME
    if manifest.exists() and not overwrite:
        raise InputError(f"{manifest} already exists (choose another directory, or overwrite)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: not a directory")
    specs = [v if isinstance(v, VoiceSpec) else VoiceSpec.parse(v) for v in voices]
    check_voices(specs, lang)
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    out.mkdir(parents=True, exist_ok=True)
    root = str(out.resolve())
    jobs = plan(sentences, specs, Path(root), rates, pitches, combos_per_sentence, seed)
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="utt", file=sys.stderr, disable=not progress)
    start = time.perf_counter()
    utts: list[Utterance] = []
    audio_seconds = 0.0
    batches = [jobs[i : i + 16] for i in range(0, len(jobs), 16)]
    try:
        if workers == 1:
            results = (_render_batch(b, sample_rate, root) for b in batches)
            executor = None
        else:
            context = multiprocessing.get_context("spawn")
            executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
            results = executor.map(
                _render_batch, batches, itertools.repeat(sample_rate), itertools.repeat(root)
            )
        for batch in results:
            utts += batch
            audio_seconds += sum(u.duration or 0.0 for u in batch)
            bar.update(len(batch))
            bar.set_postfix_str(f"{audio_seconds / max(time.perf_counter() - start, 1e-9):.0f}x real time")
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    write_manifest(manifest, utts)
    return CorpusReport(len(utts), audio_seconds, time.perf_counter() - start)
