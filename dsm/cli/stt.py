"""`dsm stt FILE...` (transcribe files) and `dsm eval MANIFEST.jsonl` (WER and speed on a labelled set)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsm.audio import read_audio, stream_audio
from dsm.cli.common import STDIO, add_checkpoint_options, check_parent, checkpoint_kwargs, label
from dsm.errors import DsmError, InputError
from dsm.stt.formats import FORMATS, render, to_json
from dsm.stt.timestamps import WordStarted
from dsm.stt.transcriber import SAMPLE_RATE, Transcriber, Transcript, VadStep
from dsm.stt.wer import corpus_errors, word_errors

log = logging.getLogger("dsm.cli")

PUBLISHED_REPO = "kyutai/stt-1b-en_fr"  # named in --help; the default is the bundled model
EXTENSIONS = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt"}
END_OF_TURN_HEAD = 2  # the DSM script's head index for "end of turn"
END_OF_TURN_THRESHOLD = 0.5


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def load_transcriber(args: argparse.Namespace) -> Transcriber:
    start = time.perf_counter()
    transcriber = Transcriber.from_checkpoint(
        **checkpoint_kwargs(args), exact=args.exact, temperature=args.temperature
    )
    log.info("loaded the STT model in %.2f s", time.perf_counter() - start)
    return transcriber


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


# -- dsm stt --------------------------------------------------------------------------------------------


@dataclass
class _Input:
    name: str  # as given on the command line ("-" for stdin)
    audio: np.ndarray | str  # stdin's samples, or a file's path (streamed from disk when transcribed)


def _read_inputs(paths: Sequence[str]) -> tuple[list[_Input], list[str]]:
    """Inputs checked to be readable (files are opened, not decoded: they stream when transcribed), and
    an error message per input that could not be read (the others go on)."""
    inputs: list[_Input] = []
    errors: list[str] = []
    for path in paths:
        try:
            if path != STDIO:
                stream_audio(path, SAMPLE_RATE, name=label(path)).close()  # fails now if unreadable or empty
                inputs.append(_Input(path, path))
                continue
            wav = read_audio(sys.stdin.buffer, SAMPLE_RATE, name=label(path))
            if len(wav) == 0:
                raise InputError(f"{label(path)}: audio is empty (0 samples)")
            inputs.append(_Input(path, wav))
        except DsmError as e:
            errors.append(str(e))
    return inputs, errors


def _output_path(args: argparse.Namespace, name: str, used: set[Path]) -> Path:
    stem = "stdin" if name == STDIO else Path(name).stem
    path = Path(args.output_dir) / f"{stem}.{EXTENSIONS[args.format]}"
    n = 1
    while path in used:  # two inputs with the same stem: a.wav, other/a.wav
        n += 1
        path = Path(args.output_dir) / f"{stem}-{n}.{EXTENSIONS[args.format]}"
    used.add(path)
    return path


def _end_of_turn_steps(result: Transcript) -> list[float]:
    """Times (seconds of audio) where head 2's end-of-turn probability rises above 0.5."""
    if result.vad is None or result.vad.shape[1] <= END_OF_TURN_HEAD:
        return []
    probs = result.vad[:, END_OF_TURN_HEAD]
    times, armed = [], True
    for step, p in enumerate(probs.tolist()):
        if armed and p > END_OF_TURN_THRESHOLD:
            times.append(max(0.0, (step + 1 - result.prefix_chunks - result.prompt_steps) / 12.5))
            armed = False
        elif p <= END_OF_TURN_THRESHOLD:
            armed = True
    return times


def _json_result(name: str, result: Transcript, vad: bool) -> dict[str, Any]:
    extra: dict[str, Any] = {"file": name}
    if vad and result.vad is not None:
        extra["end_of_turn"] = [round(t, 3) for t in _end_of_turn_steps(result)]
        extra["vad"] = [[round(p, 4) for p in row] for row in result.vad.tolist()]
    return to_json(result.text, result.words, duration=result.duration, extra=extra)


def _format_result(args: argparse.Namespace, name: str, result: Transcript) -> str:
    if args.format == "json":
        return json.dumps(_json_result(name, result, args.vad), ensure_ascii=False) + "\n"
    return render(args.format, result.text, result.words)


def _is_end_of_turn(event: object) -> bool:
    return (
        isinstance(event, VadStep)
        and len(event.probs) > END_OF_TURN_HEAD
        and event.probs[END_OF_TURN_HEAD] > END_OF_TURN_THRESHOLD
    )


def _live(transcriber: Transcriber, item: _Input, args: argparse.Namespace) -> None:
    """Print words to stdout as the streaming session decodes them (text format, one input)."""
    stream = transcriber.stream(temperature=args.temperature)
    out = sys.stdout
    first, armed = True, True

    def show(events: Iterable[object]) -> None:
        nonlocal first, armed
        for event in events:
            if isinstance(event, WordStarted):
                out.write(("" if first else " ") + event.text)
                first, armed = False, True
            elif args.vad and armed and not first and _is_end_of_turn(event):
                out.write(" [end of turn]")
                armed = False
        out.flush()

    chunk = 1920 * 5  # feed 0.4 s at a time
    blocks = [item.audio] if isinstance(item.audio, np.ndarray) else stream_audio(item.audio, SAMPLE_RATE)
    for block in blocks:
        for start in range(0, len(block), chunk):
            show(stream.push(block[start : start + chunk]))
    show(stream.flush())
    out.write("\n")
    out.flush()


def cmd_stt(args: argparse.Namespace) -> int:
    """`dsm stt FILE...`: transcripts to stdout, or one file per input in --output-dir."""
    if args.inputs.count(STDIO) > 1:
        raise InputError("stdin (-) can be given only once")
    if args.output_dir:
        out_dir = Path(args.output_dir)
        if not out_dir.is_dir():
            raise InputError(f"--output-dir {out_dir}: directory does not exist")
    elif len(args.inputs) > 1 and args.format in ("srt", "vtt"):
        raise InputError(f"several inputs in {args.format} format need --output-dir DIR")
    inputs, errors = _read_inputs(args.inputs)
    for message in errors:
        print(f"dsm: error: {message}", file=sys.stderr)
    if not inputs:
        return 2
    transcriber = load_transcriber(args)
    if args.vad and transcriber.num_heads <= END_OF_TURN_HEAD:
        warning = "--vad: this model has no end-of-turn head (kyutai/stt-1b-en_fr has one)"
        print(f"dsm: warning: {warning}", file=sys.stderr)
    prompt = transcriber.make_prompt(args.prompt_text, args.prompt_audio)
    live = len(inputs) == 1 and args.format == "text" and not args.output_dir and prompt is None
    if live:
        _live(transcriber, inputs[0], args)
        return 2 if errors else 0
    used: set[Path] = set()
    multiple_text = len(args.inputs) > 1 and args.format == "text" and not args.output_dir
    for batch in _batches(inputs, args.batch_size):
        start = time.perf_counter()
        results = transcriber.transcribe_batch(
            [item.audio for item in batch],
            temperature=args.temperature,
            prompt_text=None if prompt is None else prompt.text,
            prompt_audio=None if prompt is None else prompt.audio,
            progress=_show_progress(args),
        )
        elapsed = time.perf_counter() - start
        audio_seconds = sum(r.duration for r in results)
        log.info(
            "transcribed %.1f s of audio in %.2f s (RTF %.3f)",
            audio_seconds,
            elapsed,
            elapsed / audio_seconds,
        )
        for item, result in zip(batch, results, strict=True):
            text = _format_result(args, item.name, result)
            if args.output_dir:
                path = _output_path(args, item.name, used)
                check_parent(path)
                path.write_text(text, encoding="utf-8")
                log.info("%s -> %s", label(item.name), path)
            else:
                if multiple_text:
                    text = f"{label(item.name)}: {text}"
                sys.stdout.write(text)
                sys.stdout.flush()
    return 2 if errors else 0


# -- dsm eval -------------------------------------------------------------------------------------------


@dataclass
class _Example:
    audio: Path
    reference: str


def read_eval_manifest(path: Path) -> list[_Example]:
    """Lines of ``{"audio": PATH, "text": REFERENCE}`` (NeMo's ``audio_filepath`` is accepted too);
    relative audio paths are relative to the manifest's directory."""
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object")
        audio = row.get("audio", row.get("audio_filepath"))
        text = row.get("text")
        if not isinstance(audio, str) or not isinstance(text, str):
            raise InputError(f"{path}:{number}: needs string fields 'audio' and 'text'")
        audio_path = Path(audio).expanduser()
        if not audio_path.is_absolute():
            audio_path = path.parent / audio_path
        examples.append(_Example(audio_path, text))
    if not examples:
        raise InputError(f"{path}: the manifest has no entries")
    return examples


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            c.ljust(w) if i in (0, len(row) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    """`dsm eval MANIFEST.jsonl`: corpus WER (Whisper-style English normaliser) and real-time factor."""
    examples = read_eval_manifest(Path(args.manifest))
    if args.limit:
        examples = examples[: args.limit]
    for ex in examples:
        if not ex.audio.is_file():
            raise InputError(f"{ex.audio}: audio file not found (listed in {args.manifest})")
    transcriber = load_transcriber(args)
    normalize = not args.no_normalize
    rows, hypotheses, references = [], [], []
    total_audio = total_time = 0.0
    from tqdm import tqdm

    bar = tqdm(total=len(examples), desc="evaluating", unit="file", disable=not _show_progress(args))
    for batch in _batches(examples, args.batch_size):
        start = time.perf_counter()  # files stream from disk as they are transcribed: decoding counts too
        results = transcriber.transcribe_batch([ex.audio for ex in batch], temperature=args.temperature)
        elapsed = time.perf_counter() - start
        total_time += elapsed
        for ex, result in zip(batch, results, strict=True):
            errors = word_errors(ex.reference, result.text, normalize=normalize)
            total_audio += result.duration
            hypotheses.append(result.text)
            references.append(ex.reference)
            rows.append(
                {
                    "audio": str(ex.audio),
                    "duration": round(result.duration, 3),
                    "reference": ex.reference,
                    "hypothesis": result.text,
                    "wer": round(errors.rate, 4) if math.isfinite(errors.rate) else None,
                    "errors": errors.errors,
                    "reference_words": errors.n_reference_words,
                }
            )
        bar.update(len(batch))
    bar.close()
    corpus = corpus_errors(references, hypotheses, normalize=normalize)
    rtf = total_time / total_audio if total_audio else float("nan")
    table = [("file", "seconds", "WER %", "errors", "hypothesis")]
    for row in rows:
        table.append(
            (
                Path(row["audio"]).name,
                f"{row['duration']:.2f}",
                "inf" if row["wer"] is None else f"{100 * row['wer']:.1f}",
                str(row["errors"]),
                row["hypothesis"][:60],
            )
        )
    print(_table(table))
    print(
        f"\ncorpus WER {100 * corpus.rate:.2f} % "
        f"({corpus.errors} errors / {corpus.n_reference_words} words), "
        f"{len(rows)} files, {total_audio:.1f} s of audio in {total_time:.1f} s: real-time factor {rtf:.3f} "
        f"({1 / rtf if rtf else float('inf'):.2f}x real time)"
    )
    if args.output:
        report = {
            "wer": corpus.rate,
            "errors": corpus.errors,
            "reference_words": corpus.n_reference_words,
            "audio_seconds": total_audio,
            "processing_seconds": total_time,
            "rtf": rtf,
            "normalized": normalize,
            "files": rows,
        }
        out = Path(args.output)
        check_parent(out)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


# -- parsers --------------------------------------------------------------------------------------------


def _add_decoding_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding")
    group.add_argument(
        "--batch-size", type=_positive, default=1, metavar="N", help="files per batched run (default: 1)"
    )
    group.add_argument(
        "--temperature", type=float, default=0.0, help="text sampling temperature; 0 is greedy (default)"
    )
    group.add_argument(
        "--exact", action="store_true", help="reference kernels (bit-identical to Kyutai's code in float32)"
    )


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    stt = commands.add_parser(
        "stt",
        parents=[common],
        help="transcribe audio files with a DSM speech-to-text model",
        description="Transcribe audio files (words with timestamps). With one input in text format the words "
        "are printed live as they are decoded.",
    )
    stt.set_defaults(func=cmd_stt)
    stt.add_argument("inputs", nargs="+", metavar="FILE", help="audio files (any common format), - for stdin")
    stt.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    stt.add_argument(
        "--output-dir", metavar="DIR", help="write one file per input (FILE-stem.txt/.json/.srt/.vtt) here"
    )
    stt.add_argument(
        "--vad", action="store_true", help="semantic VAD: end-of-turn markers (text) or probabilities (json)"
    )
    stt.add_argument("--prompt-text", metavar="TEXT", help="text prompt steering spelling (e.g. a name)")
    stt.add_argument(
        "--prompt-audio", metavar="FILE", help="audio prompt, fed before the audio (its words cut)"
    )
    _add_decoding_options(stt)
    add_checkpoint_options(stt, PUBLISHED_REPO, "bfloat16 on GPU, float32 on CPU")

    ev = commands.add_parser(
        "eval",
        parents=[common],
        help="word error rate and speed on a labelled manifest",
        description='Transcribe every file of a JSON-lines manifest ({"audio": PATH, "text": REF} per '
        "line) and report the corpus WER (Whisper-style English normaliser), the real-time factor and a "
        "per-file table.",
    )
    ev.set_defaults(func=cmd_eval)
    ev.add_argument("manifest", metavar="MANIFEST.jsonl")
    ev.add_argument("--output", metavar="FILE.json", help="also write the per-file results as JSON")
    ev.add_argument("--limit", type=_positive, metavar="N", help="only the first N entries")
    ev.add_argument("--no-normalize", action="store_true", help="compare raw lower-cased words")
    _add_decoding_options(ev)
    add_checkpoint_options(ev, PUBLISHED_REPO, "bfloat16 on GPU, float32 on CPU")
