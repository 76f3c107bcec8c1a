"""File transcription speed: dsm's `Transcriber` against the reference recipe (Kyutai's `moshi` 0.2.13).

The full stt-1b-en_fr architecture (`tests/lm_configs.STT_1B`, 16 layers, dim 2048; `--layers` reduces it)
and the full Mimi are built in the reference with random weights (`tests/oracle.py`), the LM in `--dtype`
(bfloat16 by default, as Kyutai runs it) and Mimi in float32; both are exported in Kyutai's checkpoint
layout and loaded with dsm's loaders, so both sides hold the same weights.

One `--seconds` long test signal (default 60 s) is transcribed by

* the reference: the DSM scripts' recipe (`stt_from_file_pytorch.py`): streaming Mimi encode of each 80 ms
  chunk, then `LMGen.step`, greedy, with the config's prefix and suffix silence (0 and 7 chunks for
  stt-1b-en_fr);
* dsm: `Transcriber.transcribe` (fast kernels, and with `--exact` also the reference's own kernels; with
  `--quantize int8 [int4]` also the fast kernels with weight-only quantized LM products).

Both run frame by frame, their steps alternating in a rotating order so that load from other processes
falls on all of them alike (on a busy 2-core machine a sequential comparison is meaningless); each
implementation's time is the sum of its own steps. dsm runs its live session (`SttStream.push` of each
80 ms chunk: Mimi encode + one LM step). Then each dsm mode transcribes the same samples as a file
(`Transcriber.transcribe`, alone; in fast mode Mimi encodes 16 frames per call there), the offline figure.

Reported: processing seconds, real-time factor (processing time / audio time; < 1 is faster than real
time), speed-up, the fraction of identical text tokens, and the per-frame streaming latency (median and
p90 of one chunk). The random model's text is meaningless; the timing is what counts.

    python benchmarks/stt.py [--seconds 60] [--layers 16] [--dtype bfloat16|float32] [--threads 2]
        [--exact] [--quantize int8 int4] [--json PATH]

Needs the reference package (`pip install moshi==0.2.13`); dsm itself never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    PieceTokenizer,
    fmt,
    import_test_oracle,
    machine_info,
    machine_line,
    print_table,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tqdm import tqdm  # noqa: E402

from dsm.codec import load_mimi  # noqa: E402
from dsm.lm import LMConfig, load_lm  # noqa: E402
from dsm.nn.quant import KINDS  # noqa: E402
from dsm.stt.transcriber import FRAME_SIZE, Transcriber  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--layers", type=int, default=None, help="temporal layers (default: the real 16)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--exact", action="store_true", help="also time dsm with the reference kernels")
    p.add_argument("--quantize", nargs="*", choices=KINDS, default=[], help="also time dsm quantized")
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


class ReferenceRecipe:
    """The DSM script's loop with the reference models, one 80 ms chunk per `step`."""

    def __init__(self, mimi, lm) -> None:
        from moshi.models.lm import LMGen

        self.mimi = mimi
        self.gen = LMGen(lm, use_sampling=False, temp=0, temp_text=0)
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(torch.no_grad())
        self.stack.enter_context(mimi.streaming(1))
        self.stack.enter_context(self.gen.streaming(1))
        self.tokens: list[int] = []

    def step(self, chunk: torch.Tensor) -> None:
        self.tokens.append(int(self.gen.step(self.mimi.encode(chunk))[0, 0, 0]))


class DsmStream:
    """dsm's live session (`SttStream.push` of one 80 ms chunk: Mimi encode + one LM step). The session
    feeds the prefix silence itself on its first push, so the prefix chunks are not pushed again."""

    def __init__(self, transcriber: Transcriber) -> None:
        self.stream = transcriber.stream()
        self.prefix = transcriber.prefix_chunks
        self.seen = 0

    def step(self, chunk: torch.Tensor) -> None:
        self.seen += 1
        if self.seen == 1:
            self.stream.push(np.zeros(0, dtype=np.float32))  # runs the whole prefix silence
        if self.seen > self.prefix:
            self.stream.push(chunk[0, 0].numpy())

    @property
    def tokens(self) -> list[int]:
        return self.stream.tokens


def ms_stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": 1000 * statistics.median(ordered),
        "p90_ms": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
    }


def use_mode(transcriber: Transcriber, mode: str) -> None:
    """Set a dsm mode (fast, exact, int8, int4) for the sessions and transcriptions made next."""
    transcriber.exact = mode == "exact"
    transcriber.quantize = mode if mode in KINDS else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    oracle, lm_configs = import_test_oracle()
    dtype = DTYPES[args.dtype]
    cfg = copy.deepcopy(lm_configs.STT_1B)
    if args.layers:
        cfg = lm_configs.reduced(cfg, layers=args.layers)
    stt_cfg = cfg.get("stt_config", {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0})
    info = machine_info()
    print(machine_line(info))
    print(f"building the reference models ({cfg['num_layers']} layers, {args.dtype}) ...", flush=True)
    ref_mimi = oracle.reference_mimi(seed=0)
    ref_lm = oracle.reference_lm(cfg, seed=1, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        lm_path = oracle.export_lm(ref_lm, Path(tmp) / "model.safetensors")
        mimi_path = oracle.export_mimi(ref_mimi, Path(tmp) / "mimi.safetensors")
        lm = load_lm(lm_path, LMConfig.from_kyutai(cfg), dtype=dtype)
        for p in lm.parameters():  # out of the file mapping, into ordinary memory
            p.data = p.data.clone()
        mimi = load_mimi(mimi_path)
    transcriber = Transcriber(mimi, lm, PieceTokenizer(), stt_cfg)

    samples = int(args.seconds * 24000)
    wav = oracle.test_signal(1, samples, seed=7)[0, 0]
    padded = torch.nn.functional.pad(wav, (0, -samples % FRAME_SIZE))
    silence = torch.zeros(1, 1, FRAME_SIZE)
    chunks = (
        [silence] * transcriber.prefix_chunks
        + list(torch.split(padded[None, None], FRAME_SIZE, dim=-1))
        + [silence] * transcriber.suffix_chunks
    )
    print(f"transcribing {args.seconds:.0f} s of audio ({len(chunks)} steps) ...", flush=True)
    results: dict[str, Any] = {
        "machine": info,
        "seconds": args.seconds,
        "dtype": args.dtype,
        "layers": cfg["num_layers"],
    }
    # Steps of the implementations alternate, in a rotating order, so that load from other processes
    # falls on all of them alike; each one's time is the sum of its own steps.
    modes = ["fast"] + (["exact"] if args.exact else []) + list(dict.fromkeys(args.quantize))
    contenders: dict[str, Any] = {"reference": ReferenceRecipe(ref_mimi, ref_lm)}
    for mode in modes:
        use_mode(transcriber, mode)
        contenders[mode] = DsmStream(transcriber)
    use_mode(transcriber, "fast")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    start_wall = time.perf_counter()
    for i, chunk in enumerate(tqdm(chunks, desc="steps", unit="frame", disable=not sys.stderr.isatty())):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            start = time.perf_counter()
            contenders[name].step(chunk)
            times[name].append(time.perf_counter() - start)
    results["wall_s"] = time.perf_counter() - start_wall
    ref_tokens = contenders["reference"].tokens
    results["reference_s"] = sum(times["reference"])
    results["latency_reference"] = ms_stats(times["reference"][2:])
    for mode in modes:
        results[f"{mode}_s"] = sum(times[mode])
        got = contenders[mode].tokens
        results[f"{mode}_same_tokens"] = sum(a == b for a, b in zip(got, ref_tokens, strict=True)) / len(
            ref_tokens
        )
        results[f"latency_{mode}"] = ms_stats(times[mode][2:])

    # Offline file transcription (`Transcriber.transcribe`: Mimi encodes 16 frames per call in fast mode),
    # each mode alone after the interleaved run.
    for mode in modes:
        use_mode(transcriber, mode)
        start = time.perf_counter()
        transcript = transcriber.transcribe(wav.numpy())
        results[f"{mode}_file_s"] = time.perf_counter() - start
        results[f"{mode}_file_same_tokens"] = sum(
            a == b for a, b in zip(transcript.tokens, ref_tokens, strict=True)
        ) / len(ref_tokens)
    use_mode(transcriber, "fast")

    rows = [
        [
            "reference recipe",
            fmt(results["reference_s"], 1),
            fmt(results["reference_s"] / args.seconds, 3),
            "1.00x",
            "-",
        ]
    ]
    for suffix, label in (("", ""), ("_file", ", file (transcribe)")):
        for mode in modes:
            t = results[f"{mode}{suffix}_s"]
            rows.append(
                [
                    f"dsm {mode}{label}",
                    fmt(t, 1),
                    fmt(t / args.seconds, 3),
                    f"{results['reference_s'] / t:.2f}x",
                    f"{100 * results[f'{mode}{suffix}_same_tokens']:.1f} %",
                ]
            )
    print_table(["implementation", "seconds", "RTF", "speed-up", "same tokens"], rows)
    lat = [
        [
            "reference (Mimi encode + LMGen.step)",
            fmt(results["latency_reference"]["median_ms"]),
            fmt(results["latency_reference"]["p90_ms"]),
        ]
    ]
    for mode in modes:
        lat.append(
            [
                f"dsm {mode} (SttStream.push of 80 ms)",
                fmt(results[f"latency_{mode}"]["median_ms"]),
                fmt(results[f"latency_{mode}"]["p90_ms"]),
            ]
        )
    print_table(["per-frame streaming latency", "median ms", "p90 ms"], lat)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
