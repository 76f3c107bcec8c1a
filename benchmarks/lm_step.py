"""Streaming LM step speed: dsm's `LMGen` against the reference's (Kyutai's `moshi` 0.2.13), same weights.

The full-depth stt-1b-en_fr architecture (`tests/lm_configs.STT_1B`: 16 layers, dim 2048, context 750;
`--layers` reduces the depth) is built in the reference with random weights (`tests/oracle.py`), in
`--dtype` (bfloat16 by default, as Kyutai runs it), exported in Kyutai's checkpoint layout to a temporary
file and loaded with `dsm.lm.load_lm` in the same dtype. dsm's weights are then copied out of the file
mapping, so both models hold ordinary resident memory. Every generator gets the same random audio tokens
and decodes greedily (temp 0). For each of `--batch-sizes`, one batch size at a time:

* ms per step: the median over `--steps` timed steps (after `--warmup` steps) of one generator step for
  the whole batch (one 80 ms frame per stream), for the reference and for dsm in each of `--modes`
  (fast: dsm's default kernels; exact: `exact=True`, the reference's own kernels), interleaved round by
  round with a rotating order, as `benchmarks/codec.py` does. Real-time streams = batch * 80 / ms.
* checks: exact mode's greedy text tokens must be identical to the reference's on every step, or its
  timings are not reported (exit code 1); fast mode's fraction of identical tokens is printed.
  Greedy text is fed back, so one flipped token can change the rest of a stream.
* memory: KV-cache bytes of each generator, and its peak resident-set growth, measured in this process
  over the generator's construction and first step (run for each implementation alone): the peak
  (VmHWM) is reset through /proc/self/clear_refs and freed heap memory handed back with malloc_trim
  before each, so earlier allocations are neither counted nor reused unseen.

On the 2-core AVX2 VM (no native bf16) a full-depth bf16 step takes 0.2-0.3 s at batch 1 and 8-20 s at
batch 64, so each batch size gets about `--max-batch-seconds` of rounds: where `--warmup` + `--steps` do
not fit, fewer run (at least 2 timed steps; the first step is always a warm-up) and a note says so
(`--max-batch-seconds 0`: no cap; the default run takes ~6 min). Where the generators of one batch size
do not fit in memory together (batch 64 at full depth: ~6.3 GB of bf16 KV cache each), they run in
successive passes, the reference in the first; later passes are checked against its tokens.
Other processes on the machine distort the timings badly (2 torch threads on 2 cores: a descheduled
thread stalls every parallel op), so the share of CPU time they took is printed per batch size, with the
fastest step of each implementation beside the medians.
`--skip-reference` runs the reference for the warm-up steps only (untimed; the check covers those).
The timed steps are a stream's first ones, where dsm's fast modes attend over the filled part of the
750-slot ring only; `--full-ring` makes them read the whole ring, as every step of a stream longer than
60 s does (the reference always reads the whole ring).
`--profile N` prints the top N ops (torch.profiler) of one extra step of each implementation.

    python benchmarks/lm_step.py [--threads 2] [--batch-sizes 1 4 16 64] [--steps 20] [--warmup 5]
        [--layers 16] [--dtype bfloat16|float32] [--modes fast exact] [--max-batch-seconds 60]
        [--skip-reference] [--full-ring] [--profile N] [--json PATH]

Needs the reference package (`pip install moshi==0.2.13`); dsm itself never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import (
    Timing,
    fmt,
    import_test_oracle,
    machine_info,
    machine_line,
    print_table,
    timed,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import dsm.nn.transformer as transformer_module  # noqa: E402
from dsm.engine import LMGen  # noqa: E402
from dsm.lm import LMConfig, load_lm  # noqa: E402
from dsm.nn.quant import KINDS  # noqa: E402

FRAME_MS = 80.0
MIN_STEPS = 2  # timed steps kept when --max-batch-seconds cuts a batch size short
MEMORY_RESERVE = 1.5e9  # bytes left free when deciding which generators can be alive together
BUSY_WARNING = 0.05  # share of the CPU taken by other processes above which timings are flagged
NAMES = {"ref": "reference", "fast": "dsm fast", "exact": "dsm exact"} | {k: f"dsm {k}" for k in KINDS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64], help="streams per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per batch size (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps, >= 1 (default 5)")
    p.add_argument("--layers", type=int, default=16, help="transformer layers (default 16, the full model)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="both models' dtype")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["fast", "exact", *KINDS],
        default=["fast", "exact"],
        help="dsm kernels: fast (dsm's default), exact (the reference's own kernels), int8 / int4 (fast with "
        "reduced-precision products, dsm.nn.quant)",
    )
    p.add_argument(
        "--max-batch-seconds",
        type=float,
        default=60.0,
        help="rough cap on the timed rounds of one batch size (per pass); 0: none (default 60)",
    )
    p.add_argument("--skip-reference", action="store_true", help="time dsm only (reference: warm-up only)")
    p.add_argument(
        "--full-ring",
        action="store_true",
        help="dsm attends over the whole 750-slot ring as in a long stream's steady state (default: over "
        "the filled part, as in a stream's first minute; the reference always reads the whole ring)",
    )
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N ops of one more step")
    p.add_argument("--seed", type=int, default=0, help="weights and audio tokens seed (default 0)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or min(args.batch_sizes) < 1 or args.layers < 1:
        p.error(
            "--steps, --warmup (the first step is always a warm-up), --layers and batch sizes must be >= 1"
        )
    args.modes = list(dict.fromkeys(args.modes))
    return args


def import_reference():
    """`tests/oracle.py` and `tests/lm_configs.py`, and the reference's generator class."""
    oracle, lm_configs = import_test_oracle()
    from moshi.models.lm import LMGen as RefGen

    return oracle, lm_configs, RefGen


# -- memory -------------------------------------------------------------------------------------------
def proc_status_bytes(key: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), in bytes; None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so later growth shows in RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakGrowth:
    """Peak resident-set growth over a `with` block: VmHWM at its end minus VmRSS at its start (after
    `release_memory` and a peak reset); without a resettable peak, the growth of VmRSS only."""

    def __enter__(self) -> PeakGrowth:
        release_memory()
        self.peak_resettable = reset_peak()
        self.start = proc_status_bytes("VmRSS")
        self.bytes: int | None = None
        return self

    def __exit__(self, *exc) -> None:
        end = proc_status_bytes("VmHWM" if self.peak_resettable else "VmRSS")
        if self.start is not None and end is not None:
            self.bytes = end - self.start


class OtherLoad:
    """Share of the machine's CPU time that other processes (and the hypervisor: steal) took over a
    `with` block, from /proc/stat and this process's own CPU time; None where unavailable. A few
    percent is background noise; with as many torch threads as cores, much more slows every step."""

    @staticmethod
    def _ticks() -> tuple[int, int] | None:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        total = sum(values)
        return total - values[3] - values[4], total  # busy (all but idle and iowait), total

    def __enter__(self) -> OtherLoad:
        self.share: float | None = None
        self.start, self.own = self._ticks(), os.times()
        return self

    def __exit__(self, *exc) -> None:
        end, own = self._ticks(), os.times()
        if self.start is None or end is None or end[1] <= self.start[1]:
            return
        own_ticks = (own.user + own.system - self.own.user - self.own.system) * os.sysconf("SC_CLK_TCK")
        self.share = max(0.0, (end[0] - self.start[0] - own_ticks) / (end[1] - self.start[1]))


# -- contenders ---------------------------------------------------------------------------------------
@dataclass
class Contender:
    """One generator of a batch size: `step(audio [B, K])` returns the text token of each stream [B]."""

    name: str
    step: Callable[[torch.Tensor], torch.Tensor]
    kv_bytes: int
    close: Callable[[], None] = lambda: None
    tokens: list[torch.Tensor] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)
    first_ms: float = float("nan")
    peak_bytes: int | None = None
    profile: str | None = None


def make_reference(ref, RefGen, batch: int) -> Contender:
    gen = RefGen(ref, temp=0, temp_text=0)
    stack = contextlib.ExitStack()
    stack.enter_context(gen.streaming(batch))
    kv = 0
    for module in ref.modules():
        cache = getattr(getattr(getattr(module, "_streaming_state", None), "kv_cache", None), "cache", None)
        if isinstance(cache, torch.Tensor):
            kv += cache.nbytes

    def step(audio: torch.Tensor) -> torch.Tensor:
        out = gen.step(audio[:, :, None])
        if out is None:  # before the largest delay has passed
            return torch.full((batch,), -2, dtype=torch.long)
        return out[:, 0, 0]

    return Contender("ref", step, kv, close=stack.close)


def make_dsm(model, batch: int, mode: str) -> Contender:
    quantize = mode if mode in KINDS else None
    gen = LMGen(model, batch, temp=0, temp_text=0, exact=mode == "exact", quantize=quantize)
    kv = sum(t.nbytes for t in gen.state.keys + gen.state.values)
    return Contender(mode, lambda audio: gen.step(audio).tokens[:, 0], kv)


def kv_estimate(cfg: dict, batch: int, dtype: torch.dtype) -> int:
    """KV-cache bytes of one generator: layers x (K, V) x batch x heads x context x head dim x itemsize."""
    heads = cfg["num_heads"] // cfg.get("kv_repeat", 1)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (
        cfg["num_layers"] * 2 * batch * heads * cfg["context"] * (cfg["dim"] // cfg["num_heads"]) * itemsize
    )


def plan_passes(names: list[str], need: int) -> tuple[list[list[str]], list[str]]:
    """Group the generators so that each group's memory (`need` bytes each) fits what is available now."""
    avail = mem_available()
    if avail is None:
        return [names], []
    budget = avail - MEMORY_RESERVE
    fits = max(0, int(budget // need)) if need > 0 else len(names)
    if fits == 0:
        return [], names
    return [names[i : i + fits] for i in range(0, len(names), fits)], []


def rounds_for(args, round_ms: float) -> tuple[int, int, bool]:
    """(further warm-up rounds, timed rounds, capped) within --max-batch-seconds."""
    warm, steps = args.warmup - 1, args.steps
    if args.max_batch_seconds <= 0 or not round_ms > 0:
        return warm, steps, False
    affordable = int(args.max_batch_seconds * 1000 // round_ms)
    if affordable >= warm + steps:
        return warm, steps, False
    warm = min(warm, 1) if affordable >= 1 + 3 else 0
    return warm, min(steps, max(MIN_STEPS, affordable - warm)), True


def profile_step(contender: Contender, audio: torch.Tensor, rows: int) -> str:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        contender.step(audio)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# -- one batch size -----------------------------------------------------------------------------------
def run_pass(names, makers, audio, args) -> tuple[dict[str, Contender], dict[str, Any]]:
    """Build the pass's generators one by one (memory of construction + first step each, alone), then
    run interleaved rounds: further warm-ups, then timed steps."""
    contenders: dict[str, Contender] = {}
    for name in names:
        with PeakGrowth() as mem:
            c = makers[name]()
            tokens, c.first_ms = timed(lambda c=c: c.step(audio[:, :, 0]))
        c.tokens.append(tokens)
        c.peak_bytes = mem.bytes
        contenders[name] = c
    timed_names = [n for n in names if not (n == "ref" and args.skip_reference)]
    round_ms = sum(contenders[n].first_ms for n in names)
    warm, steps, capped = rounds_for(args, round_ms)
    for r in range(warm + steps):
        i = 1 + r
        active = names if r < warm else timed_names
        shift = r % max(1, len(active))
        for name in active[shift:] + active[:shift]:
            c = contenders[name]
            tokens, ms = timed(lambda c=c, i=i: c.step(audio[:, :, i]))
            c.tokens.append(tokens)
            if r >= warm:
                c.timing.samples_ms.append(ms)
        if sys.stdout.isatty():
            print(f"    {'warm-up' if r < warm else 'timed'} step {i} done", end="\r", flush=True)
    if args.profile:
        for name in timed_names:
            contenders[name].profile = profile_step(
                contenders[name], audio[:, :, 1 + warm + steps], args.profile
            )
    info = {"generators": names, "warmup": 1 + warm, "steps": steps, "capped": capped}
    return contenders, info


def bench_batch(batch, ref, ours, RefGen, cfg, args, audio) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    makers = {
        "ref": lambda: make_reference(ref, RefGen, batch),
        **{mode: (lambda mode=mode: make_dsm(ours, batch, mode)) for mode in args.modes},
    }
    names = ["ref", *args.modes]
    need = int(kv_estimate(cfg, batch, dtype) * 1.1 + 2e8)  # KV + activations and allocator slack
    release_memory()
    passes, left_out = plan_passes(names, need)
    result: dict[str, Any] = {"batch": batch, "passes": [], "notes": [], "impl": {}}
    if left_out:
        result["notes"].append(f"batch {batch}: not run, one generator needs ~{need / 1e9:.1f} GB")
        return result
    if len(passes) > 1:
        result["notes"].append(
            f"batch {batch}: generators run in passes {' | '.join('+'.join(p) for p in passes)} (not "
            f"enough memory for all at once, ~{need / 1e9:.1f} GB each); later passes are timed without "
            "the reference alongside and checked against its tokens from the first pass"
        )
    ref_tokens = None
    for p, pass_names in enumerate(passes):
        print(
            f"  batch {batch}, pass {p + 1}/{len(passes)}: {', '.join(NAMES[n] for n in pass_names)}",
            flush=True,
        )
        contenders, info = run_pass(pass_names, makers, audio[:batch], args)
        result["passes"].append(info)
        if info["capped"]:
            result["notes"].append(
                f"batch {batch}{f' pass {p + 1}' if len(passes) > 1 else ''}: {info['steps']} timed steps "
                f"after {info['warmup']} warm-up (--max-batch-seconds {args.max_batch_seconds:g})"
            )
        if "ref" in contenders:
            ref_tokens = torch.stack(contenders["ref"].tokens)
        for name in pass_names:
            result["impl"][name] = summary(contenders[name], ref_tokens, p + 1)
        while contenders:  # free this pass's generators (KV caches) before the next one
            contenders.popitem()[1].close()
        release_memory()
    if sys.stdout.isatty():
        print(" " * 40, end="\r")
    return result


def summary(c: Contender, ref_tokens: torch.Tensor, pass_number: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "timing": {**c.timing.as_dict(), "samples_ms": c.timing.samples_ms} if c.timing.samples_ms else None,
        "first_step_ms": c.first_ms,
        "peak_rss_growth_bytes": c.peak_bytes,
        "kv_cache_bytes": c.kv_bytes,
        "pass": pass_number,
        "profile": c.profile,
    }
    if c.name == "ref":
        entry["distinct_text_tokens"] = len(torch.unique(ref_tokens))
    else:
        entry["check"] = check_tokens(ref_tokens, torch.stack(c.tokens))
    return entry


def check_tokens(ref_tokens: torch.Tensor, got: torch.Tensor) -> dict[str, Any]:
    """Agreement of greedy text tokens [steps, B] over the steps both ran."""
    n = min(len(ref_tokens), len(got))
    equal = ref_tokens[:n] == got[:n]
    return {"steps": n, "identical": bool(equal.all()), "equal_fraction": equal.float().mean().item()}


# -- report -------------------------------------------------------------------------------------------
def exact_ok(entry: dict) -> bool:
    return entry["check"]["identical"]


def median_ms(impl: dict, name: str, stat: str = "median_ms") -> float | None:
    """An implementation's median (or `min_ms`) ms; None if not timed or (exact mode) not identical to
    the reference."""
    entry = impl.get(name)
    if entry is None or entry["timing"] is None or (name == "exact" and not exact_ok(entry)):
        return None
    return entry["timing"][stat]


def ms_cell(impl: dict, name: str, stat: str = "median_ms") -> str:
    if name == "exact" and name in impl and not exact_ok(impl[name]):
        return "MISMATCH"
    return fmt(median_ms(impl, name, stat))


def mb_cell(impl: dict, name: str) -> str:
    peak = impl[name]["peak_rss_growth_bytes"] if name in impl else None
    return "-" if peak is None else f"{peak / 1e6:.0f}"


def table(results: list[dict], modes: list[str]) -> tuple[list[str], list[list[str]]]:
    headers = ["batch", "ref ms"] + [f"{m} ms" for m in modes] + [f"{m} x" for m in modes]
    headers += ["RT ref"] + [f"RT {m}" for m in modes]
    headers += ["peak MB ref"] + [f"peak MB {m}" for m in modes] + ["KV MB each", "others CPU"]
    rows = []
    for res in results:
        impl = res["impl"]
        if not impl:
            rows.append([res["batch"]] + ["-"] * (len(headers) - 1))
            continue
        ref_ms = median_ms(impl, "ref")
        dsm_ms = [median_ms(impl, m) for m in modes]
        row = [res["batch"], ms_cell(impl, "ref")] + [ms_cell(impl, m) for m in modes]
        row += [fmt(ref_ms / v, 2, "x") if ref_ms and v else "-" for v in dsm_ms]
        row += [fmt(res["batch"] * FRAME_MS / v, 2) if v else "-" for v in [ref_ms, *dsm_ms]]
        row += [mb_cell(impl, "ref")] + [mb_cell(impl, m) for m in modes]
        share = res.get("other_cpu_share")
        row += [f"{impl['ref']['kv_cache_bytes'] / 1e6:.0f}", "-" if share is None else f"{100 * share:.0f}%"]
        rows.append(row)
    return headers, rows


def min_table(results: list[dict], modes: list[str]) -> tuple[list[str], list[list[str]]]:
    """The fastest timed step of each: nearer an idle machine's figures where other processes ran."""
    headers = ["batch", "ref min ms"] + [f"{m} min ms" for m in modes] + [f"{m} x" for m in modes]
    rows = []
    for res in results:
        impl = res["impl"]
        if not impl:
            continue
        ref_ms = median_ms(impl, "ref", "min_ms")
        dsm_ms = [median_ms(impl, m, "min_ms") for m in modes]
        row = [res["batch"], ms_cell(impl, "ref", "min_ms")] + [ms_cell(impl, m, "min_ms") for m in modes]
        rows.append(row + [fmt(ref_ms / v, 2, "x") if ref_ms and v else "-" for v in dsm_ms])
    return headers, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformer_module.FILLED_SPAN_ON_CPU = not args.full_ring
    oracle, lm_configs, RefGen = import_reference()
    started = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    cfg = (
        lm_configs.STT_1B
        if args.layers == lm_configs.STT_1B["num_layers"]
        else lm_configs.reduced(lm_configs.STT_1B, args.layers)
    )

    print(f"building the reference stt-1b-en_fr LM ({args.layers} layers, {args.dtype}, random weights) ...")
    with tempfile.TemporaryDirectory() as tmp:
        ref = oracle.reference_lm(cfg, seed=args.seed, dtype=dtype)
        path = oracle.export_lm(ref, Path(tmp) / "model.safetensors")
        ours = load_lm(path, LMConfig.from_kyutai(cfg), dtype=dtype)
        with torch.no_grad():  # own memory instead of pages of the (deleted) temporary file
            for t in [*ours.parameters(), *ours.buffers()]:
                t.data = t.data.clone()
    release_memory()
    params = sum(p.numel() for p in ours.parameters())
    info = machine_info()
    print(machine_line(info))
    print(
        f"model: {params / 1e6:.0f} M parameters, {args.layers} layers, dim {cfg['dim']}, context "
        f"{cfg['context']}, {args.dtype}; setup {time.perf_counter() - started:.0f} s",
        flush=True,
    )

    n_frames = args.warmup + args.steps + 1
    gen = torch.Generator().manual_seed(args.seed + 1)
    audio = torch.randint(0, cfg["card"], (max(args.batch_sizes), cfg["n_q"], n_frames), generator=gen)
    results = []
    with torch.inference_mode():
        for batch in args.batch_sizes:
            t0 = time.perf_counter()
            with OtherLoad() as load:
                results.append(bench_batch(batch, ref, ours, RefGen, cfg, args, audio))
            results[-1]["other_cpu_share"] = load.share
            print(f"  batch {batch}: {time.perf_counter() - t0:.0f} s", flush=True)
            if load.share is not None and load.share > BUSY_WARNING:
                results[-1]["notes"].append(
                    f"batch {batch}: other processes took {100 * load.share:.0f}% of the CPU time meanwhile: "
                    "these timings are slowed down and noisy"
                )

    print()
    print(f"checks (greedy text tokens of dsm against the reference, {args.dtype}):")
    valid = True
    for res in results:
        impl = res["impl"]
        if not impl:
            continue
        line = f"  batch {res['batch']:>3}: reference {impl['ref']['distinct_text_tokens']} distinct tokens"
        for mode in args.modes:
            check = impl[mode]["check"]
            line += (
                f"; {mode}: {'identical' if check['identical'] else 'DIFFERENT'} "
                f"({100 * check['equal_fraction']:.2f}% equal over {check['steps']} steps)"
            )
            if mode == "exact" and not check["identical"]:
                valid = False
        print(line)
    if args.profile:
        for res in results:
            for name, entry in res["impl"].items():
                if entry["profile"]:
                    title = f"top ops, one step of {NAMES[name]} at batch {res['batch']}"
                    print(f"\n{title}:\n{entry['profile']}")

    print()
    print_table(*table(results, args.modes))
    print(
        f"\nms: median wall time of one step for the whole batch (one {FRAME_MS:g} ms frame per stream); "
        "x = ref ms / dsm ms;\nRT = streams served in real time = batch * 80 / ms; peak MB = resident-set "
        "growth over the generator's\nconstruction and first step; KV MB = KV-cache bytes of one generator; "
        "others CPU = share of the machine's\nCPU time used by other processes meanwhile (above "
        f"{100 * BUSY_WARNING:.0f}% the timings are slowed down and noisy)."
    )
    print("\nfastest timed step (the median is what counts on an idle machine; this is nearer to it when")
    print("other processes took CPU time):")
    print_table(*min_table(results, args.modes))
    notes = [n for res in results for n in res["notes"]]
    if not valid:
        notes.append("exact mode: NOT reporting timings where its tokens differ from the reference's")
    if args.skip_reference:
        notes.append("--skip-reference: the reference ran the warm-up steps only (untimed)")
    for note in notes:
        print(f"note: {note}")
    print(machine_line(info))
    print(f"total {time.perf_counter() - started:.0f} s")

    if args.json:
        for res in results:  # no timings for a mismatching exact mode
            entry = res["impl"].get("exact")
            if entry is not None and not exact_ok(entry):
                entry["timing"] = None
        payload = {
            "benchmark": "lm_step",
            "machine": info,
            "args": vars(args),
            "model": {"arch": "stt-1b-en_fr", "layers": args.layers, "parameters": params},
            "valid": valid,
            "notes": notes,
            "results": results,
        }
        write_json(args.json, payload)
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
