"""TTS speed: dsm's `Synthesizer` against the reference `TTSModel` (Kyutai's `moshi` 0.2.13), same weights.

The full tts-1.6b-en_fr architecture (`tests/lm_configs.TTS_1B6`: 16 temporal layers of dim 2048, a 4-layer
depformer of dim 1024 sampling 32 codebooks with 11 weight sets, voice cross-attention over 5 x 125
positions; `--layers` reduces the temporal depth) is built in the reference with random weights
(`tests/oracle.py`, no slow init) in `--dtype` (bfloat16, as Kyutai runs it), exported in Kyutai's layout
and loaded by dsm. Both get the same full-size Mimi (random weights), tokenizer (the tests' tiny
SentencePiece model) and random voice embedding [1, 512, 125], and synthesize the same random 40-word
texts at the reference's sampling settings (temperature 0.6, top-k 25 / 250, CFG value 2.0 as a
condition), from the same seed, decoding every frame with a streaming Mimi as soon as it exists (the
reference the way Kyutai's streaming script does). Generation stops after the 1.28 s audio delay, the
acoustic delay, `--warmup` and `--steps` frames of audio.

Reported per batch size (one generator step = one 80 ms frame for every stream):

* ms/step: median wall time of the `--steps` timed steps (LM step with the depformer + Mimi decode of
  the frame); RT = streams served in real time = batch * 80 / ms; RTF = ms / 80.
* time to first audio: from the start of the request (conditioning, cross-attention keys/values) to the
  first decoded frame: the 16 delay steps without the depformer, 2 acoustic-delay steps, one full step
  and one decode. dsm keeps the cross-attention keys/values of recent voices, so it is given "cold"
  (first use of the voice, batch 1) and "warm" (every later request); the reference recomputes them.
* codes equal: share of the generated audio codes equal to the reference's. dsm's default kernels
  (fast) round differently, so a sampled token eventually flips and the streams diverge; `exact`
  mode (`--modes fast exact`) must be identical, or its timings are not reported (exit code 1).
* Mimi: ms per frame of each implementation's streaming decoder alone.

With `--dsm-dtypes bfloat16 float32`, dsm also runs with its weights upcast to float32 (twice the
memory): on CPUs without bf16 arithmetic this is much faster for batches, where bf16 products are
compute bound. That pass runs after the bf16 passes (memory), and compares its codes with the
reference's bf16 ones (they differ by construction).

Timings are noisy when other processes share the CPU: the share of CPU time they took is printed.

    python benchmarks/tts_step.py [--threads 2] [--batch-sizes 1 4 16] [--steps 6] [--warmup 2]
        [--layers 16] [--dtype bfloat16] [--dsm-dtypes bfloat16 float32] [--modes fast exact int8 int4]
        [--skip-reference] [--json PATH]

Needs the reference package (`pip install moshi==0.2.13`); dsm itself never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import fmt, import_test_oracle, machine_info, machine_line, print_table, write_json

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from dsm.codec import load_mimi  # noqa: E402
from dsm.lm import LMConfig, load_lm  # noqa: E402
from dsm.nn.quant import KINDS  # noqa: E402
from dsm.tts.checkpoint import TtsConfig  # noqa: E402
from dsm.tts.synthesizer import Synthesizer  # noqa: E402

FRAME_MS = 80.0
SUFFIX = ".1e68beda@240.safetensors"
VOICE = "bench/voice.wav"
BUSY_WARNING = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16], help="streams per step")
    p.add_argument("--steps", type=int, default=6, help="timed steps of audio per run (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed audio steps before them (default 2)")
    p.add_argument("--layers", type=int, default=16, help="temporal layers (default 16, the full model)")
    p.add_argument(
        "--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="the reference's dtype"
    )
    p.add_argument(
        "--dsm-dtypes",
        nargs="+",
        choices=["bfloat16", "float32"],
        default=["bfloat16"],
        help="dsm weight dtypes to time (default: bfloat16; float32 = upcast bf16 weights, 2x memory)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["fast", "exact", *KINDS],
        default=["fast"],
        help="dsm kernels: fast, exact, or fast with reduced-precision products (dsm.nn.quant)",
    )
    p.add_argument("--skip-reference", action="store_true", help="time dsm only")
    p.add_argument("--seed", type=int, default=0, help="weights, texts and sampling seed")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or min(args.batch_sizes) < 1 or args.layers < 1:
        p.error("--steps, --layers and batch sizes must be >= 1, --warmup >= 0")
    return args


class OtherLoad:
    """Share of the machine's CPU time that other processes took over a `with` block (None if unknown)."""

    @staticmethod
    def _ticks() -> tuple[int, int] | None:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        return sum(values) - values[3] - values[4], sum(values)

    def __enter__(self) -> OtherLoad:
        import os

        self.share: float | None = None
        self.start, self.own = self._ticks(), os.times()
        return self

    def __exit__(self, *exc) -> None:
        import os

        end, own = self._ticks(), os.times()
        if self.start is None or end is None or end[1] <= self.start[1]:
            return
        own_ticks = (own.user + own.system - self.own.user - self.own.system) * os.sysconf("SC_CLK_TCK")
        self.share = max(0.0, (end[0] - self.start[0] - own_ticks) / (end[1] - self.start[1]))


# -- setup ----------------------------------------------------------------------------------------------
def build(args, tmp: Path) -> dict[str, Any]:
    oracle, lm_configs = import_test_oracle()
    from moshi.models import loaders
    from tiny_tokenizer import train_tokenizer

    dtype = getattr(torch, args.dtype)
    cfg = copy.deepcopy(lm_configs.TTS_1B6)
    if args.layers != cfg["num_layers"]:
        cfg = lm_configs.reduced(cfg, layers=args.layers, depformer_layers=cfg["depformer_num_layers"])
    ref_lm = oracle.reference_lm(cfg, seed=args.seed, dtype=dtype)
    ref_lm.condition_provider.float()
    weights = oracle.export_lm(ref_lm, tmp / "model.safetensors")

    torch.manual_seed(args.seed)
    ref_mimi = loaders.get_mimi(None, device="cpu", num_codebooks=32)
    with torch.no_grad():
        for name, buf in ref_mimi.named_buffers():
            if name.endswith("_codebook.embedding_sum"):
                buf.normal_()
            elif name.endswith(("_codebook.cluster_usage", "_codebook._initialized")):
                buf.fill_(1.0)
    oracle._clear_codebook_caches(ref_mimi)
    ref_mimi.eval()
    oracle.export_mimi(ref_mimi, tmp / "mimi.safetensors")

    tok = train_tokenizer(tmp, vocab_size=120, min_words=5, max_words=12)
    voice_path = tmp / "voices" / (VOICE + SUFFIX)
    voice_path.parent.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(
        {"speaker_wavs": torch.randn(1, 512, 125, generator=torch.Generator().manual_seed(1))},
        str(voice_path),
    )
    return {"cfg": cfg, "ref_lm": ref_lm, "ref_mimi": ref_mimi, "weights": weights, "tok": tok, "tmp": tmp}


def load_dsm(setup: dict, dtype: torch.dtype, mode: str, max_steps: int) -> Synthesizer:
    cfg = setup["cfg"]
    lm = load_lm(setup["weights"], LMConfig.from_kyutai(cfg), dtype=dtype)
    with torch.no_grad():  # own memory instead of pages of the temporary file
        for t in [*lm.parameters(), *lm.buffers()]:
            t.data = t.data.clone()
    mimi = load_mimi(setup["tmp"] / "mimi.safetensors")
    return Synthesizer(
        mimi,
        lm,
        setup["tok"],
        TtsConfig.from_dict(cfg["tts_config"]),
        voice_suffix=SUFFIX,
        voice_repo=str(setup["tmp"] / "voices"),
        max_steps=max_steps,
        exact=mode == "exact",
        quantize=mode if mode in KINDS else None,
    )


def reference_tts(setup: dict, max_steps: int):
    from moshi.models.tts import StateMachine, TokenIds, TTSModel

    cfg = setup["cfg"]
    machine = StateMachine(TokenIds(cfg["text_card"] + 1), cfg["tts_config"]["second_stream_ahead"], 8, 2)
    return TTSModel(
        lm=setup["ref_lm"],
        mimi=setup["ref_mimi"],
        tokenizer=setup["tok"],
        voice_suffix=SUFFIX,
        voice_repo="unused",
        machine=machine,
        delay_steps=16,
        n_q=32,
        temp=0.6,
        max_gen_length=max_steps,
    )


def texts(batch: int, seed: int) -> list[str]:
    from tiny_tokenizer import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(batch)]


# -- runs -------------------------------------------------------------------------------------------------
def run_reference(setup: dict, batch: int, args, max_steps: int) -> dict[str, Any]:
    ref = reference_tts(setup, max_steps)
    voice = setup["tmp"] / "voices" / (VOICE + SUFFIX)
    marks: list[float] = []
    codes: list[torch.Tensor] = []
    mimi = setup["ref_mimi"]
    start = time.perf_counter()
    entries = [ref.prepare_script([t], padding_between=1) for t in texts(batch, args.seed)]
    attrs = [ref.make_condition_attributes([voice], cfg_coef=2.0)] * batch

    def on_frame(frame: torch.Tensor) -> None:
        if (frame[:, 1:] >= 0).all():  # as Kyutai's streaming script: decode every complete frame
            mimi.decode(frame[:, 1:]).clip(-1, 1)
            codes.append(frame[:, 1:, 0].clone())
            marks.append(time.perf_counter())

    torch.manual_seed(args.seed)
    with torch.no_grad(), mimi.streaming(batch):
        ref.generate(entries, attrs, on_frame=on_frame)
    return summarize(start, marks, codes, args)


def run_dsm(synth: Synthesizer, batch: int, args) -> dict[str, Any]:
    marks: list[float] = []
    codes: list[torch.Tensor] = []
    start = time.perf_counter()
    for chunks in synth.stream_batch(texts(batch, args.seed), VOICE, seed=args.seed):
        marks.append(time.perf_counter())
        codes.append(torch.stack([c.codes for c in chunks]))
    return summarize(start, marks, codes, args)


def summarize(start: float, marks: list[float], codes: list[torch.Tensor], args) -> dict[str, Any]:
    steps = [1000 * (b - a) for a, b in zip(marks, marks[1:], strict=False)][args.warmup :]
    return {
        "ttfa_s": marks[0] - start if marks else None,
        "step_ms": statistics.median(steps) if steps else None,
        "min_step_ms": min(steps) if steps else None,
        "steps_ms": steps,
        "frames": len(codes),
        "codes": torch.stack(codes) if codes else None,  # [frames, B, n_q]
    }


def agreement(ref: dict | None, got: dict) -> dict[str, Any] | None:
    if ref is None or ref["codes"] is None or got["codes"] is None:
        return None
    n = min(len(ref["codes"]), len(got["codes"]))
    equal = ref["codes"][:n] == got["codes"][:n]
    return {"frames": n, "identical": bool(equal.all()), "equal_fraction": equal.float().mean().item()}


def decode_ms(decode, batch: int, frames: int = 6) -> float:
    codes = torch.randint(0, 2048, (batch, 32, 1))
    times = []
    for _ in range(frames):
        t = time.perf_counter()
        decode(codes)
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times[1:])


def release() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


# -- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    info = machine_info()
    max_steps = 16 + 2 + args.warmup + args.steps + 1
    results: dict[str, Any] = {"batches": {}, "notes": []}
    valid = True
    with tempfile.TemporaryDirectory() as tmp_dir, torch.inference_mode():
        print(f"building tts-1.6b-en_fr ({args.layers} layers, {args.dtype}, random weights) ...", flush=True)
        setup = build(args, Path(tmp_dir))
        params = sum(p.numel() for p in setup["ref_lm"].parameters())
        print(machine_line(info))
        print(
            f"model: {params / 1e6:.0f} M parameters; setup {time.perf_counter() - started:.0f} s", flush=True
        )
        contenders = [
            (d, m) for d in args.dsm_dtypes for m in args.modes if not (d == "float32" and m == "exact")
        ]
        ref_runs: dict[int, dict] = {}
        for dtype_name in dict.fromkeys(d for d, _ in contenders):
            for mode in [m for d, m in contenders if d == dtype_name]:
                name = f"dsm {mode}" + ("" if dtype_name == args.dtype else f" {dtype_name}")
                synth = load_dsm(setup, getattr(torch, dtype_name), mode, max_steps)
                cold = run_dsm(synth, 1, args)  # first use of the voice: keys/values computed
                results.setdefault("ttfa_cold_s", {})[name] = cold["ttfa_s"]
                for batch in args.batch_sizes:
                    entry = results["batches"].setdefault(batch, {"impl": {}})
                    if batch not in ref_runs and not args.skip_reference and dtype_name == args.dtype:
                        print(f"  batch {batch}: reference ...", flush=True)
                        with OtherLoad() as load:
                            ref_runs[batch] = run_reference(setup, batch, args, max_steps)
                        entry["impl"]["reference"] = ref_runs[batch] | {"other_cpu": load.share}
                    print(f"  batch {batch}: {name} ...", flush=True)
                    with OtherLoad() as load:
                        got = run_dsm(synth, batch, args)
                    got["other_cpu"] = load.share
                    got["check"] = agreement(ref_runs.get(batch), got)
                    if mode == "exact" and got["check"] is not None and not got["check"]["identical"]:
                        valid = False
                        got["step_ms"] = None
                    entry["impl"][name] = got
                    entry.setdefault("decode_ms", {})[name] = decode_ms(
                        synth.mimi.streaming_decoder(batch).step, batch
                    )
                    if "reference" in entry["impl"] and "reference" not in entry["decode_ms"]:
                        mimi = setup["ref_mimi"]
                        with mimi.streaming(batch):
                            entry["decode_ms"]["reference"] = decode_ms(mimi.decode, batch)
                del synth
                release()

    names = ["reference"] + [f"dsm {m}" + ("" if d == args.dtype else f" {d}") for d, m in contenders]
    if args.skip_reference:
        names = names[1:]
    print()
    headers = [
        "batch",
        "impl",
        "ms/step",
        "min ms",
        "x ref",
        "RT streams",
        "RTF",
        "1st audio s",
        "Mimi ms",
        "codes equal",
        "others CPU",
    ]
    rows = []
    for batch, entry in results["batches"].items():
        ref = entry["impl"].get("reference")
        for name in names:
            r = entry["impl"].get(name)
            if r is None:
                continue
            ms = r["step_ms"]
            check = r.get("check")
            speedup = ref["step_ms"] / ms if ref and ms and ref["step_ms"] else None
            rows.append(
                [
                    batch,
                    name,
                    "MISMATCH" if ms is None and name.startswith("dsm exact") else fmt(ms),
                    fmt(r["min_step_ms"]),
                    fmt(speedup, 2, "x") if name != "reference" else "",
                    fmt(batch * FRAME_MS / ms, 2) if ms else "-",
                    fmt(ms / FRAME_MS, 2) if ms else "-",
                    fmt(r["ttfa_s"], 2),
                    fmt(entry["decode_ms"].get(name)),
                    ""
                    if check is None
                    else f"{100 * check['equal_fraction']:.1f}%"
                    + (" (identical)" if check["identical"] else ""),
                    "-" if r.get("other_cpu") is None else f"{100 * r['other_cpu']:.0f}%",
                ]
            )
    print_table(headers, rows)
    print(
        "\nms/step: median wall time of one step for the whole batch (LM step incl. depformer + streaming\n"
        "Mimi decode of the frame); RT streams = batch * 80 / ms; RTF = ms / 80; 1st audio: time to first\n"
        "audio (dsm: voice keys/values cached, see below); Mimi ms: streaming decode of one frame alone;\n"
        "codes equal: generated audio codes equal to the reference's."
    )
    for name, ttfa in results.get("ttfa_cold_s", {}).items():
        print(f"{name}: time to first audio with a voice not seen before (batch 1): {ttfa:.2f} s")
    for batch, entry in results["batches"].items():
        for name, r in entry["impl"].items():
            if r.get("other_cpu") is not None and r["other_cpu"] > BUSY_WARNING:
                results["notes"].append(
                    f"batch {batch} {name}: other processes took {100 * r['other_cpu']:.0f}% of the CPU time"
                )
    if not valid:
        results["notes"].append("exact mode: codes differ from the reference's; its timings are not reported")
    for note in results["notes"]:
        print(f"note: {note}")
    print(machine_line(info))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        for entry in results["batches"].values():
            for r in entry["impl"].values():
                r.pop("codes", None)
        payload = {
            "benchmark": "tts_step",
            "machine": info,
            "args": vars(args),
            "model": {"arch": "tts-1.6b-en_fr", "layers": args.layers, "parameters": params},
            "valid": valid,
            **json.loads(json.dumps(results, default=str)),
        }
        write_json(args.json, payload)
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
