"""Corpus helpers of the bundled-model recipe (scripts/train_bundled.sh).

    python scripts/bundled_data.py merge OUT.jsonl IN.jsonl ... [--default-split train] [--speakers S]
    python scripts/bundled_data.py extra-text MANIFEST [MANIFEST...] OUT.txt [--count 6000] [--seed 2]
    python scripts/bundled_data.py tokenizer MANIFEST OUT.model [--vocab 1000]
    python scripts/bundled_data.py speed MANIFEST OUT_DIR --speaker S --factor 1.2 --name NEW [--workers 2]
    python scripts/bundled_data.py tts-codes TTS_CONFIG OUT.safetensors [--checkpoint PATH] [--temperature T]
        [--soft]
    python scripts/bundled_data.py ship-codec EXPORT_DIR              # -> dsm/models/codec
    python scripts/bundled_data.py ship-lm {stt,tts} EXPORT_DIR [--voice NAME=AUDIO ...]  # -> dsm/models/KIND

The tokenizer is a SentencePiece unigram model trained on the text of the manifest's *training* split only
(held-out sentences stay unseen), with Kyutai's special ids: 0 unknown / word start, 1 BOS, 2 EOS,
3 padding.

Shipping writes the trained models into the package (`dsm.bundled`): the codec's weights in bfloat16 except
its codebooks (float32, so that codes are picked as in training), the LMs as exported (bfloat16) with
configs that name the shared codec as ``../codec/mimi.safetensors``, and the TTS voices as the codec latent
of the first seconds of one training clip of each speaker (`dsm.tts.voices.voice_from_audio`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from dsm.train.config import TrainConfig, load_config
from dsm.train.data.manifest import manifest_root, read_manifest, rebase, write_manifest


def merge(out: Path, inputs: list[Path], default_split: str = "", speakers: str = "") -> int:
    """Write the utterances of `inputs` into one manifest at `out`, audio paths relative to its folder;
    utterances without a split get `default_split`; `speakers` (comma-separated), if given, keeps theirs."""
    keep = set(filter(None, speakers.split(",")))
    utts = []
    for path in inputs:
        utts += rebase(read_manifest(path), manifest_root(path), out.resolve().parent)
    if keep:
        utts = [u for u in utts if u.speaker in keep]
    if default_split:
        utts = [u if u.split else dataclasses.replace(u, split=default_split) for u in utts]
    write_manifest(out, utts)
    return len(utts)


def train_tokenizer(manifest: Path, out: Path, vocab: int, split: str = "train") -> int:
    """Train the SentencePiece model on the `split` sentences of `manifest`; returns its vocabulary size."""
    import sentencepiece as spm

    texts = sorted({u.text for u in read_manifest(manifest) if not split or u.split == split})
    if not texts:
        raise SystemExit(f"{manifest}: no {split!r} sentences to train a tokenizer on")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "text.txt"
        corpus.write_text("\n".join(texts) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "tok"),
            vocab_size=vocab,
            hard_vocab_limit=False,
            model_type="unigram",
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            minloglevel=2,
        )
        out.write_bytes((Path(tmp) / "tok.model").read_bytes())
    return spm.SentencePieceProcessor(model_file=str(out)).vocab_size()


def extra_text(manifests: list[Path], out: Path, count: int, seed: int) -> int:
    """Write `count` new generated sentences (none of them in any of `manifests`, held-out ones included)."""
    from dsm.train.data.text import generate_sentences

    known = {u.text.strip() for manifest in manifests for u in read_manifest(manifest)}
    new = [t for t in generate_sentences("en", count + len(known), seed=seed) if t.strip() not in known]
    out.write_text("\n".join(new[:count]) + "\n")
    return min(count, len(new))


def held_out_text(manifest: Path, out: Path) -> int:
    """Write the held-out sentences: test-split texts that no other split of `manifest` has (in order)."""
    utts = read_manifest(manifest)
    heard = {u.text.strip() for u in utts if u.split != "test"}
    new = list(
        dict.fromkeys(u.text.strip() for u in utts if u.split == "test" and u.text.strip() not in heard)
    )
    out.write_text("\n".join(new) + "\n")
    return len(new)


def _speed_clip(job: tuple[Path, Path, int]) -> None:
    from dsm.audio import read_audio, write_audio

    source, target, rate = job
    target.parent.mkdir(parents=True, exist_ok=True)
    write_audio(target, read_audio(str(source), sample_rate=rate), 24_000)


def speed(manifest: Path, out_dir: Path, speaker: str, factor: float, name: str, workers: int = 1) -> int:
    """Speed perturbation: every utterance of ``speaker`` played ``factor`` times faster (resampled to
    24 kHz / factor and read as 24 kHz, so pitch and formants rise by ``factor`` as tempo does: another,
    higher voice above 1, a lower one below), as speaker ``name`` with its word times scaled; splits kept.
    Writes OUT_DIR/clips and OUT_DIR/manifest.jsonl."""
    from concurrent.futures import ProcessPoolExecutor

    root = manifest_root(manifest)
    utts = [u for u in read_manifest(manifest) if u.speaker == speaker]
    if not utts:
        raise SystemExit(f"{manifest}: no utterance of speaker {speaker!r}")
    rate = round(24_000 / factor)
    jobs, out = [], []
    for i, u in enumerate(utts):
        audio = f"clips/{i // 1000:03d}/{i:06d}.wav"
        jobs.append((u.audio_path(root), out_dir / audio, rate))
        words = [dataclasses.replace(w, start=w.start / factor, end=w.end / factor) for w in u.words or []]
        duration = None if u.duration is None else u.duration / factor
        out.append(dataclasses.replace(u, audio=audio, words=words, speaker=name, duration=duration))
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(pool.map(_speed_clip, jobs, chunksize=32))
    write_manifest(out_dir / "manifest.jsonl", out)
    return len(out)


def ship_codec(export: Path, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    from dsm.codec.loader import CONFIG_NAME, WEIGHTS_NAME, read_mimi_config

    state = load_file(str(export / WEIGHTS_NAME))
    keep32 = ("_codebook.",)  # the EMA codebooks: nearest-codeword search as in training
    state = {
        k: v.to(torch.bfloat16) if v.is_floating_point() and not any(s in k for s in keep32) else v
        for k, v in state.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / WEIGHTS_NAME))
    config = read_mimi_config(export / CONFIG_NAME)
    (out / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    print(f"codec -> {out} ({(out / WEIGHTS_NAME).stat().st_size / 1e6:.1f} MB)")
    for kind in ("stt", "tts"):  # the shipped models beside it load it with the architecture in their config
        lm_config = out.parent / kind / "config.json"
        if lm_config.is_file():
            raw = json.loads(lm_config.read_text())
            if "mimi_config" in raw and raw["mimi_config"] != config.to_dict():
                raw["mimi_config"] = config.to_dict()
                lm_config.write_text(json.dumps(raw, indent=2) + "\n")
                print(f"{lm_config}: mimi_config updated")


def voice_clip(manifest: Path, speaker: str, seconds: float) -> Path:
    """The first training clip of ``speaker`` at least ``seconds`` long (else its longest)."""
    utts = [u for u in read_manifest(manifest) if u.speaker == speaker and u.split == "train"]
    if not utts:
        raise SystemExit(f"{manifest}: no training clip of speaker {speaker!r}")
    long = [u for u in utts if (u.duration or 0.0) >= seconds]
    pick = long[0] if long else max(utts, key=lambda u: u.duration or 0.0)
    return pick.audio_path(manifest_root(manifest))


def parse_generation(specs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` options of ``ship-lm --generation`` as a checked config ``generation`` table: the
    TTS's sampling defaults (`TtsCheckpoint.generation`), e.g. ``temperature=0``."""
    from dsm.errors import CheckpointError
    from dsm.tts.checkpoint import check_generation

    table = {}
    for spec in specs:
        key, _, value = spec.partition("=")
        try:
            table[key] = json.loads(value)
        except json.JSONDecodeError:
            message = f"ship-lm: --generation {spec!r}: VALUE must be a number or true/false"
            raise SystemExit(message) from None
    try:
        return check_generation(table, "ship-lm --generation")
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None


def ship_lm(
    kind: str,
    export: Path,
    out: Path,
    voices: list[str],
    voice_seconds: float,
    manifest: Path,
    generation: list[str] | None = None,
) -> None:
    from dsm.audio import read_audio
    from dsm.bundled import bundled
    from dsm.codec import load_mimi
    from dsm.tts.voices import save_voice, voice_from_audio

    # the options are checked before anything is written
    if kind == "tts" and not voices:
        raise SystemExit("ship-lm tts: give at least one --voice NAME=AUDIO")
    if kind != "tts" and (voices or generation):
        raise SystemExit("ship-lm: --voice and --generation are for a TTS model")
    table = parse_generation(generation or [])
    config = json.loads((export / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name in (config["moshi_name"], config["tokenizer_name"]):
        shutil.copyfile(export / name, out / name)
    config["mimi_name"] = "../codec/mimi.safetensors"
    if kind == "tts":
        mimi = load_mimi(bundled("codec"))
        voice_seconds = float((config.get("tts_config") or {}).get("voice_seconds", voice_seconds))
        (out / "voices").mkdir(exist_ok=True)
        for spec in voices:
            name, _, audio = spec.partition("=")
            if not Path(audio).is_file():
                audio = str(voice_clip(manifest, audio, voice_seconds))
            print(f"voice {name}: {audio}")
            wav = torch.from_numpy(read_audio(audio, sample_rate=mimi.sample_rate))
            save_voice(out / "voices" / f"{name}.safetensors", voice_from_audio(mimi, wav, voice_seconds))
        config.update(voice_repo="voices", default_voice=voices[0].partition("=")[0])
        if table:
            config["generation"] = table
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{kind} -> {out} ({size / 1e6:.1f} MB)")


def tts_codes(
    cfg: TrainConfig,
    out: Path,
    checkpoint: Path | None,
    temperature: float,
    top_k: int,
    seed: int,
    limit: int | None = None,
    soft: bool = False,
) -> int:
    """The audio codes a TTS run's model draws, teacher-forced, for each of its training utterances
    (`TtsTask.draw_audio_codes`; at most ``limit``, evenly spread), keyed by resolved audio path:
    `[codec].substitute_codes` for a decoder fine-tuned on them. With ``soft``, the expected acoustic
    codewords instead (`TtsTask.expected_acoustic_codewords`, float16). Returns how many utterances."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from dsm.train.loop import DistInfo
    from dsm.train.tts import TtsTask

    task = TtsTask(cfg, DistInfo())
    state = torch.load(checkpoint or cfg.out_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    task.module.load_state_dict(state["model"])
    task.module.eval()
    gen = torch.Generator().manual_seed(seed)
    items = task.train_items
    if limit is not None and limit < len(items):
        items = [items[i * len(items) // limit] for i in range(limit)]
    codes = {}
    for item in tqdm(items, desc="expected codewords" if soft else "drawing codes", unit="utt"):
        if soft:
            value = task.expected_acoustic_codewords(item).to(torch.float16)
        else:
            value = task.draw_audio_codes(item, temperature, top_k, gen).to(torch.int16)
        codes[str(item.audio.resolve())] = value.contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(codes, str(out), metadata={"n_q": str(task.lm.cfg.dep_q)})
    return len(codes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge manifests")
    m.add_argument("out", type=Path)
    m.add_argument("inputs", type=Path, nargs="+")
    m.add_argument("--default-split", default="", help="split of utterances that have none")
    m.add_argument("--speakers", default="", help="comma-separated: keep only these speakers' utterances")
    t = sub.add_parser("tokenizer", help="train the text tokenizer on the training sentences")
    t.add_argument("manifest", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--vocab", type=int, default=1000)
    x = sub.add_parser("extra-text", help="new sentences, none of them in the manifests")
    x.add_argument("manifests", type=Path, nargs="+")
    x.add_argument("out", type=Path)
    x.add_argument("--count", type=int, default=6000)
    x.add_argument("--seed", type=int, default=2)
    h = sub.add_parser("held-out-text", help="the test split's sentences no other split has")
    h.add_argument("manifest", type=Path)
    h.add_argument("out", type=Path)
    sp = sub.add_parser("speed", help="a new voice: a speaker's utterances sped up (and pitched) by a factor")
    sp.add_argument("manifest", type=Path)
    sp.add_argument("out_dir", type=Path)
    sp.add_argument("--speaker", required=True)
    sp.add_argument("--factor", type=float, required=True, help="> 1: faster and higher")
    sp.add_argument("--name", required=True, help="the new speaker's name")
    sp.add_argument("--workers", type=int, default=1)
    tc = sub.add_parser("tts-codes", help="codes a TTS run's model draws for its training audio")
    tc.add_argument("config", type=Path)
    tc.add_argument("out", type=Path)
    tc.add_argument("--checkpoint", type=Path, default=None, help="default: the run's checkpoint.pt")
    tc.add_argument("--temperature", type=float, default=0.6)
    tc.add_argument("--top-k", type=int, default=250)
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--limit", type=int, default=None, help="at most this many utterances (evenly spread)")
    tc.add_argument(
        "--soft", action="store_true", help="expected acoustic codewords (soft decoding's), not drawn codes"
    )
    c = sub.add_parser("ship-codec", help="write the trained codec into the package")
    c.add_argument("export", type=Path)
    c.add_argument("--out", type=Path, default=None, help="default: dsm/models/codec")
    lm = sub.add_parser("ship-lm", help="write a trained STT or TTS model into the package")
    lm.add_argument("kind", choices=["stt", "tts"])
    lm.add_argument("export", type=Path)
    lm.add_argument("--out", type=Path, default=None, help="default: dsm/models/KIND")
    lm.add_argument(
        "--voice",
        action="append",
        default=[],
        metavar="NAME=AUDIO",
        help="TTS voice from an audio file or a speaker of --manifest (first: the default voice)",
    )
    lm.add_argument("--manifest", type=Path, default=Path("data/bundled/all.jsonl"))
    lm.add_argument(
        "--generation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TTS sampling default written to the config's generation table, e.g. temperature=0",
    )
    lm.add_argument(
        "--voice-seconds", type=float, default=4.0, help="when the export's tts_config has no voice_seconds"
    )
    args = parser.parse_args(argv)
    from dsm.bundled import ROOT

    if args.cmd == "merge":
        print(f"{merge(args.out, args.inputs, args.default_split, args.speakers)} utterances -> {args.out}")
    elif args.cmd == "tokenizer":
        print(f"{train_tokenizer(args.manifest, args.out, args.vocab)} pieces -> {args.out}")
    elif args.cmd == "extra-text":
        print(f"{extra_text(args.manifests, args.out, args.count, args.seed)} sentences -> {args.out}")
    elif args.cmd == "held-out-text":
        print(f"{held_out_text(args.manifest, args.out)} sentences -> {args.out}")
    elif args.cmd == "speed":
        n = speed(args.manifest, args.out_dir, args.speaker, args.factor, args.name, args.workers)
        print(f"{n} utterances -> {args.out_dir / 'manifest.jsonl'}")
    elif args.cmd == "tts-codes":
        cfg = load_config(args.config, "tts")
        n = tts_codes(
            cfg, args.out, args.checkpoint, args.temperature, args.top_k, args.seed, args.limit, args.soft
        )
        print(f"{'expected codewords' if args.soft else 'drawn codes'} of {n} utterances -> {args.out}")
    elif args.cmd == "ship-codec":
        ship_codec(args.export, args.out or ROOT / "codec")
    else:
        ship_lm(
            args.kind,
            args.export,
            args.out or ROOT / args.kind,
            args.voice,
            args.voice_seconds,
            args.manifest,
            args.generation,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
