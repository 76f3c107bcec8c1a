"""Small timing helpers shared by the benchmark scripts (machine info, interleaved timing, tables, JSON)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (falls back to `platform.processor()`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """CPU, core count, torch/python versions, thread count (and the GPU when timing on one)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One human-readable line describing the machine and versions."""
    info = info or machine_info()
    parts = [f"{info['cpu']} ({info['cores']} cores)"]
    if "gpu" in info:
        parts.append(f"GPU {info['gpu']}")
    parts += [
        f"torch {info['torch']}",
        f"{info['torch_threads']} threads",
        f"python {info['python']}",
        info["platform"],
    ]
    return " | ".join(parts)


def device_sync(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for queued work on `device` (a no-op on CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


@dataclass
class Timing:
    """Milliseconds of repeated runs; `result` holds the last run's return value."""

    samples_ms: list[float] = field(default_factory=list)
    result: Any = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms) if self.samples_ms else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "n": len(self.samples_ms)}


def timed(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> tuple[Any, float]:
    """Run `fn` once; return (its result, elapsed milliseconds)."""
    sync = sync or (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, (time.perf_counter() - start) * 1000.0


def timeit(
    fn: Callable[[], Any], warmup: int = 1, repeat: int = 5, sync: Callable[[], None] | None = None
) -> Timing:
    """Time `fn` `repeat` times after `warmup` untimed calls; see `Timing.median_ms` / `.min_ms`."""
    return interleaved({"fn": fn}, warmup=warmup, repeat=repeat, sync=sync)["fn"]


def interleaved(
    fns: dict[str, Callable[[], Any]],
    warmup: int = 1,
    repeat: int = 5,
    sync: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time several functions fairly: round-robin, rotating which goes first each round, so that slow
    drifts of the machine (other load, thermal state) hit every contender alike."""
    names = list(fns)
    out = {name: Timing() for name in names}
    for r in range(warmup + repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            result, ms = timed(fns[name], sync)
            out[name].result = result
            if r >= warmup:
                out[name].samples_ms.append(ms)
    return out


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """Format a number for a table cell ('-' when missing)."""
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}{suffix}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print an aligned plain-text table (first column left-aligned, the rest right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def import_test_oracle():
    """The test oracle helpers (`tests/oracle.py`, `tests/lm_configs.py`), after checking that the
    reference package is installed; sets the reference's no-compile / no-CUDA-graph switches first."""
    import importlib
    import os
    import sys
    from pathlib import Path

    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    os.environ.setdefault("NO_CUDA_GRAPH", "1")
    try:
        import moshi  # noqa: F401
    except ImportError:
        sys.exit("the reference package `moshi` is not installed (pip install moshi==0.2.13)")
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("oracle"), importlib.import_module("lm_configs")


class PieceTokenizer:
    """Stands in for a SentencePiece model in benchmarks, whose random LMs write arbitrary ids."""

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)

    def encode(self, text: str) -> list[int]:
        return [int(w[1:]) for w in text.split()]

    def eos_id(self) -> int:
        return 2
