"""Mimi codec speed: dsm against the reference (Kyutai's `moshi` 0.2.13), same weights, same process.

The reference Mimi is built with random weights (`tests/oracle.py`), exported in Kyutai's layout and
loaded with `dsm.codec.load_mimi`, so both run identical weights. Measured, with the two
implementations interleaved (warm-up first, then alternating which goes first):

* streaming encode / decode: median ms per 80 ms frame, fed one frame at a time (`--frames` timed
  frames after `--warmup` frames), at each of `--batch-sizes`; also their per-frame sum;
* one-shot encode / decode of `--seconds` of audio at batch 1 (median of `--repeat` runs).

Timings are only reported for a working configuration: the benchmark checks that both produce identical
codes on the streamed frames (and in one shot) and prints the max abs difference of the decoded audio
(both decoders get the reference's codes). In float32 a mismatch stops it with exit code 1.

`--dtype bfloat16` runs dsm's networks in bfloat16 (`Mimi.to_dtype`; the reference stays float32) and
reports the fraction of identical codes and the audio error against the float32 reference instead.
`--skip-reference` times dsm only (the reference still runs once, untimed, for the check).
Speed-up = reference ms / dsm ms; xRT = audio duration / compute time (80 ms / per-frame ms when streaming).

    python benchmarks/codec.py [--threads 2] [--frames 25] [--batch-sizes 1 8] [--seconds 10]
        [--device cpu] [--dtype float32|bfloat16] [--skip-reference] [--json PATH]

Needs the reference package (`pip install moshi==0.2.13`); dsm itself never imports it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _common import (
    Timing,
    device_sync,
    fmt,
    import_test_oracle,
    interleaved,
    machine_info,
    machine_line,
    print_table,
    timed,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from dsm.codec import load_mimi  # noqa: E402

FRAME = 1920  # samples per 80 ms frame at 24 kHz
FRAME_MS = 80.0
SAMPLE_RATE = 24000
AUDIO_TOL = 1e-3  # float32: max abs difference of decoded audio allowed against the reference
FAST_AGREEMENT = 0.99  # float32 fast kernels: least fraction of codes equal to the reference's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--frames", type=int, default=25, help="timed streaming frames (default 25)")
    p.add_argument("--warmup", type=int, default=5, help="untimed streaming warm-up frames (default 5)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="streaming batch sizes")
    p.add_argument("--seconds", type=float, default=10.0, help="audio length for one-shot (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="timed one-shot runs after one warm-up (default 3)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="dsm's dtype")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["fast", "exact"],
        default=["fast", "exact"],
        help="dsm streaming kernels: fast (default in dsm) and/or exact (the reference's own kernels)",
    )
    p.add_argument("--skip-reference", action="store_true", help="time dsm only")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.frames < 1 or args.warmup < 0 or args.repeat < 1 or min(args.batch_sizes) < 1:
        p.error("--frames, --repeat and batch sizes must be >= 1, --warmup >= 0")
    if args.seconds * SAMPLE_RATE < FRAME:
        p.error("--seconds must cover at least one 80 ms frame")
    return args


def compare(ref_codes, dsm_codes, ref_audio, dsm_audio) -> dict[str, Any]:
    """Code agreement and decoded-audio error of dsm against the reference."""
    same = ref_codes.shape == dsm_codes.shape
    equal = (ref_codes == dsm_codes) if same else None
    diff = None
    if ref_audio.shape == dsm_audio.shape:
        diff = (ref_audio.float() - dsm_audio.float()).abs().max().item()
    return {
        "codes_identical": bool(same and bool(equal.all())),
        "codes_equal_fraction": equal.float().mean().item() if same else 0.0,
        "first_codebook_equal_fraction": equal[:, 0].float().mean().item() if same else 0.0,
        "audio_max_abs_diff": diff,
        "audio_finite": bool(torch.isfinite(dsm_audio).all()),
        "reference_audio_peak": ref_audio.abs().max().item(),
    }


def bench_streaming(
    ref, ours, signal, batch, args, sync, expected=None, exact=False
) -> tuple[dict[str, Timing], dict]:
    """Stream `warmup + frames` frames one at a time through both encoders and both decoders.

    Both decoders get the reference's codes. With `expected` (reference codes and audio computed
    beforehand), the reference is not run here (--skip-reference)."""
    dtype = getattr(torch, args.dtype)
    wav = signal[:batch]
    wav_dsm = wav.to(dtype)
    n = args.warmup + args.frames
    names = ("ref encode", "dsm encode", "ref decode", "dsm decode", "ref enc+dec", "dsm enc+dec")
    times: dict[str, Timing] = {k: Timing() for k in names}
    out: dict[str, list[torch.Tensor]] = {"ref codes": [], "dsm codes": [], "ref audio": [], "dsm audio": []}
    enc, dec = ours.streaming_encoder(batch, exact=exact), ours.streaming_decoder(batch, exact=exact)

    def race(calls: dict[str, partial], swap: bool) -> dict[str, tuple[Any, float]]:
        order = list(calls)[::-1] if swap else list(calls)
        return {name: timed(calls[name], sync) for name in order}

    with ref.streaming(batch):
        for i in range(n):
            window = slice(i * FRAME, (i + 1) * FRAME)
            chunk, chunk_dsm = wav[..., window], wav_dsm[..., window]
            calls = {"dsm": partial(enc.step, chunk_dsm)}
            if expected is None:
                calls["ref"] = partial(ref.encode, chunk)
            encoded = race(calls, swap=i % 2 == 1)
            codes = encoded["ref"][0] if expected is None else expected[0][:batch, :, i : i + 1]
            calls = {"dsm": partial(dec.step, codes)}
            if expected is None:
                calls["ref"] = partial(ref.decode, codes)
            decoded = race(calls, swap=i % 2 == 0)
            for who in ("ref", "dsm") if expected is None else ("dsm",):
                out[f"{who} codes"].append(encoded[who][0])
                out[f"{who} audio"].append(decoded[who][0])
                if i >= args.warmup:
                    times[f"{who} encode"].samples_ms.append(encoded[who][1])
                    times[f"{who} decode"].samples_ms.append(decoded[who][1])
                    times[f"{who} enc+dec"].samples_ms.append(encoded[who][1] + decoded[who][1])
    if expected is None:
        ref_codes, ref_audio = torch.cat(out["ref codes"], -1), torch.cat(out["ref audio"], -1)
    else:
        ref_codes, ref_audio = expected[0][:batch, :, :n], expected[1][:batch, :, : n * FRAME]
    check = compare(ref_codes, torch.cat(out["dsm codes"], -1), ref_audio, torch.cat(out["dsm audio"], -1))
    check["exact"] = exact
    return times, check


def bench_one_shot(ref, ours, args, sync, oracle, device) -> tuple[dict[str, Timing], dict]:
    """One-shot encode, then decode (of the reference's codes), of `--seconds` of audio at batch 1."""
    dtype = getattr(torch, args.dtype)
    wav = oracle.test_signal(1, round(args.seconds * SAMPLE_RATE), seed=1).to(device)
    wav_dsm = wav.to(dtype)
    kw = dict(warmup=1, repeat=args.repeat, sync=sync)
    if args.skip_reference:
        enc = interleaved({"dsm": partial(ours.encode, wav_dsm)}, **kw)
        enc["ref"] = Timing(result=ref.encode(wav))
        codes = enc["ref"].result
        dec = interleaved({"dsm": partial(ours.decode, codes)}, **kw)
        dec["ref"] = Timing(result=ref.decode(codes))
    else:
        enc = interleaved({"ref": partial(ref.encode, wav), "dsm": partial(ours.encode, wav_dsm)}, **kw)
        codes = enc["ref"].result
        dec = interleaved({"ref": partial(ref.decode, codes), "dsm": partial(ours.decode, codes)}, **kw)
    check = compare(codes, enc["dsm"].result, dec["ref"].result, dec["dsm"].result)
    check["exact"] = True
    if args.dtype != "float32":  # is a code mismatch the encoder's precision or the quantizer's?
        expected = ref.encode_to_latent(wav, quantize=False)
        got = ours.encode_to_latent(wav_dsm).float()
        check["latent_rel_err"] = ((got - expected).norm() / expected.norm()).item()
    times = {f"{who} {op}": t[who] for op, t in (("encode", enc), ("decode", dec)) for who in ("ref", "dsm")}
    return times, check


def check_line(name: str, check: dict) -> str:
    identical = "yes" if check["codes_identical"] else "no"
    diff = check["audio_max_abs_diff"]
    line = (
        f"  {name:<17} codes identical: {identical} ({100 * check['codes_equal_fraction']:.2f}% equal, "
        f"codebook 0: {100 * check['first_codebook_equal_fraction']:.2f}%); decoded audio max abs diff "
        f"{'-' if diff is None else f'{diff:.3g}'} (ref peak {check['reference_audio_peak']:.3g})"
    )
    if "latent_rel_err" in check:
        line += f"; encoder latent relative error {check['latent_rel_err']:.3g}"
    return line


def is_valid(check: dict, dtype: str) -> bool:
    """float32 exact kernels must give identical codes; fast ones may flip a code where two codewords
    are within float rounding of each other (at most 1 % of codes)."""
    diff = check["audio_max_abs_diff"]
    if diff is None or not check["audio_finite"] or diff != diff:
        return False
    if dtype != "float32":
        return True
    codes_ok = check["codes_identical"] if check["exact"] else check["codes_equal_fraction"] >= FAST_AGREEMENT
    return codes_ok and diff <= AUDIO_TOL


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = device_sync(device)
    oracle, _ = import_test_oracle()
    started = time.perf_counter()

    print("building the reference Mimi (random weights) ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ref = oracle.reference_mimi(0)
        path = oracle.export_mimi(ref, Path(tmp) / "mimi.safetensors")
        ours = load_mimi(path, device=device)
    ref = ref.to(device).eval()
    if args.dtype != "float32":  # dsm's reduced-precision mode keeps the codebook search in float32
        dtype = getattr(torch, args.dtype)
        ours = ours.to_dtype(dtype) if hasattr(ours, "to_dtype") else ours.to(dtype)
    info = machine_info(device)
    print(machine_line(info))
    print(f"dsm dtype {args.dtype}, reference float32, device {device}", flush=True)

    rows: list[dict[str, Any]] = []
    checks: dict[str, dict] = {}
    n = args.warmup + args.frames
    with torch.inference_mode():
        signal = oracle.test_signal(max(args.batch_sizes), n * FRAME, seed=7).to(device)
        expected = None
        if args.skip_reference:  # reference outputs for the check, untimed, in one shot
            codes = ref.encode(signal)
            expected = (codes, ref.decode(codes))
        for mode in args.modes:
            for batch in args.batch_sizes:
                print(f"streaming ({mode}), batch {batch}: {args.warmup} + {args.frames} frames", flush=True)
                exact = mode == "exact"
                times, check = bench_streaming(ref, ours, signal, batch, args, sync, expected, exact)
                checks[f"stream b{batch} {mode}"] = check
                for op in ("encode", "decode", "enc+dec"):
                    label = f"stream {op} ({mode})"
                    rows.append(row(label, batch, times[f"ref {op}"], times[f"dsm {op}"], FRAME_MS))
        print(f"one-shot, batch 1: {args.seconds:g} s of audio, 1 warm-up + {args.repeat} runs", flush=True)
        times, checks[f"one-shot {args.seconds:g} s"] = bench_one_shot(ref, ours, args, sync, oracle, device)
        for op in ("encode", "decode"):
            label = f"{op} {args.seconds:g} s"
            rows.append(row(label, 1, times[f"ref {op}"], times[f"dsm {op}"], 1000 * args.seconds))

    print()
    print(f"checks (dsm {args.dtype} vs reference float32):")
    for name, check in checks.items():
        print(check_line(name, check))
    valid = all(is_valid(c, args.dtype) for c in checks.values())
    payload = {
        "benchmark": "codec",
        "machine": info,
        "args": vars(args),
        "valid": valid,
        "checks": checks,
        "results": rows if valid else [],
    }
    if args.json:
        write_json(args.json, payload)
    if not valid:
        print("\nNOT reporting timings: dsm's output disagrees with the reference")
        if args.dtype == "float32":
            print(f"(float32 needs identical codes and decoded audio within {AUDIO_TOL:g})")
        return 1

    print()
    headers = ["operation", "batch", "ref ms", "dsm ms", "speed-up", "ref xRT", "dsm xRT"]
    print_table(
        headers,
        [
            [
                r["operation"],
                r["batch"],
                fmt(r["ref_ms"]),
                fmt(r["dsm_ms"]),
                fmt(r["speedup"], 2, "x"),
                fmt(r["ref_xrt"], 2),
                fmt(r["dsm_xrt"], 2),
            ]
            for r in rows
        ],
    )
    print("\nms: median per 80 ms frame when streaming, per call in one shot; speed-up = ref ms / dsm ms;")
    print("xRT = audio duration / compute time (per stream; above 1 is faster than real time)")
    print(machine_line(info))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def row(operation: str, batch: int, ref_t: Timing, dsm_t: Timing, audio_ms: float) -> dict[str, Any]:
    ref_ms = ref_t.median_ms if ref_t.samples_ms else None
    dsm_ms = dsm_t.median_ms
    return {
        "operation": operation,
        "batch": batch,
        "ref_ms": ref_ms,
        "dsm_ms": dsm_ms,
        "ref_min_ms": ref_t.min_ms if ref_t.samples_ms else None,
        "dsm_min_ms": dsm_t.min_ms,
        "speedup": ref_ms / dsm_ms if ref_ms else None,
        "ref_xrt": audio_ms / ref_ms if ref_ms else None,
        "dsm_xrt": audio_ms / dsm_ms,
    }


if __name__ == "__main__":
    sys.exit(main())
