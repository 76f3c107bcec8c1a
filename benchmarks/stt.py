"""File transcription speed: dsm's `Transcriber` against the reference recipe (Kyutai's `moshi` 0.2.13).

The full stt-1b-en_fr architecture (`tests/lm_configs.STT_1B`, 16 layers, dim 2048; `--layers` reduces it)
and the full Mimi are built in the reference with random weights (`tests/oracle.py`), the LM in `--dtype`
(bfloat16 by default, as Kyutai runs it) and Mimi in float32; both are exported in Kyutai's checkpoint
layout and loaded with dsm's loaders, so both sides hold the same weights.

One `--seconds` long test signal (default 60 s) is transcribed by

* the reference: the DSM scripts' recipe (`stt_from_file_pytorch.py`): streaming Mimi encode of each 80 ms
  chunk, then `LMGen.step`, greedy, with the config's prefix and suffix silence (0 and 7 chunks for
  stt-1b-en_fr);
* dsm: `Transcriber.transcribe` (fast kernels, and with `--exact` also the reference's own kernels).

Reported: wall time, real-time factor (processing time / audio time; < 1 is faster than real time),
speed-up, the fraction of identical text tokens, and the per-frame streaming latency (median and p90 of
one 80 ms chunk pushed through `SttStream.push`, i.e. Mimi encode + one LM step, and the same for the
reference's encode + step). The random model's text is meaningless; the timing is what counts.

    python benchmarks/stt.py [--seconds 60] [--layers 16] [--dtype bfloat16|float32] [--threads 2]
        [--exact] [--latency-frames 50] [--json PATH]

Needs the reference package (`pip install moshi==0.2.13`); dsm itself never imports it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

from dsm.codec import load_mimi  # noqa: E402
from dsm.lm import LMConfig, load_lm  # noqa: E402
from dsm.stt.transcriber import FRAME_SIZE, Transcriber  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--layers", type=int, default=None, help="temporal layers (default: the real 16)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--exact", action="store_true", help="also time dsm with the reference kernels")
    p.add_argument("--latency-frames", type=int, default=50, help="frames timed for the latency figures")
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def reference_transcribe(mimi, lm, chunks: list[torch.Tensor]) -> list[int]:
    from moshi.models.lm import LMGen

    gen = LMGen(lm, use_sampling=False, temp=0, temp_text=0)
    tokens = []
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1):
        for chunk in chunks:
            tokens.append(int(gen.step(mimi.encode(chunk))[0, 0, 0]))
    return tokens


def reference_latency(mimi, lm, chunks: list[torch.Tensor]) -> list[float]:
    from moshi.models.lm import LMGen

    gen = LMGen(lm, use_sampling=False, temp=0, temp_text=0)
    times = []
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1):
        for chunk in chunks:
            start = time.perf_counter()
            gen.step(mimi.encode(chunk))
            times.append(time.perf_counter() - start)
    return times[2:]


def dsm_latency(transcriber: Transcriber, chunks: list[torch.Tensor]) -> list[float]:
    stream = transcriber.stream()
    times = []
    for chunk in chunks:
        pcm = chunk[0, 0].numpy()
        start = time.perf_counter()
        stream.push(pcm)
        times.append(time.perf_counter() - start)
    return times[2:]


def ms_stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": 1000 * statistics.median(ordered),
        "p90_ms": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
    }


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
    start = time.perf_counter()
    ref_tokens = reference_transcribe(ref_mimi, ref_lm, chunks)
    results["reference_s"] = time.perf_counter() - start
    modes = ["fast"] + (["exact"] if args.exact else [])
    for mode in modes:
        transcriber.exact = mode == "exact"
        start = time.perf_counter()
        got = transcriber.transcribe(wav.numpy(), sample_rate=24000)
        results[f"{mode}_s"] = time.perf_counter() - start
        same = sum(a == b for a, b in zip(got.tokens, ref_tokens, strict=True)) / len(ref_tokens)
        results[f"{mode}_same_tokens"] = same
    transcriber.exact = False
    frames = chunks[: args.latency_frames + 2]
    results["latency_reference"] = ms_stats(reference_latency(ref_mimi, ref_lm, frames))
    results["latency_dsm"] = ms_stats(dsm_latency(transcriber, frames))

    rows = [
        [
            "reference recipe",
            fmt(results["reference_s"], 1),
            fmt(results["reference_s"] / args.seconds, 3),
            "1.00x",
            "-",
        ]
    ]
    for mode in modes:
        t = results[f"{mode}_s"]
        rows.append(
            [
                f"dsm {mode}",
                fmt(t, 1),
                fmt(t / args.seconds, 3),
                f"{results['reference_s'] / t:.2f}x",
                f"{100 * results[f'{mode}_same_tokens']:.1f} %",
            ]
        )
    print_table(["implementation", "wall s", "RTF", "speed-up", "same tokens"], rows)
    lat = [
        [
            "reference (Mimi encode + LMGen.step)",
            fmt(results["latency_reference"]["median_ms"]),
            fmt(results["latency_reference"]["p90_ms"]),
        ],
        [
            "dsm (SttStream.push of 80 ms)",
            fmt(results["latency_dsm"]["median_ms"]),
            fmt(results["latency_dsm"]["p90_ms"]),
        ],
    ]
    print_table(["per-frame streaming latency", "median ms", "p90 ms"], lat)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
