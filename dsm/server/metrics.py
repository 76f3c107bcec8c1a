"""Prometheus metrics in the text exposition format 0.0.4, named as moshi-server names them (§6.1).

As the reference: no `_total` suffix on counters, counters and gauges carry the constant label
`handler="all"`, histograms carry no constant label. Metrics appear once first used. Thread-safe: the
model loops update them from their own threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

__all__ = ["Counter", "Gauge", "Histogram", "Registry"]

ASR_STEP_BUCKETS = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08)
ASR_CONNECTION_STEPS_BUCKETS = (2, 25, 125, 250, 500, 750, 1125, 1500, 2250, 3000, 4500)
PY_STEP_BUCKETS = (0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.08)
PY_CONNECTION_STEPS_BUCKETS = (2, 25, 62.5, 125, 250, 500, 750)


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, const_labels: dict[str, str]):
        self.name = name
        self.help = help_text
        self.const_labels = const_labels
        self.lock = threading.Lock()
        self.used = False

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self._samples()]

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonic counter, optionally split by extra label values (e.g. `kind` of error)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, const_labels: dict[str, str], label: str | None = None):
        super().__init__(name, help_text, const_labels)
        self.label = label
        self.values: dict[str, float] = {}

    def inc(self, amount: float = 1.0, value: str = "") -> None:
        with self.lock:
            self.used = True
            self.values[value] = self.values.get(value, 0.0) + amount

    def get(self, value: str = "") -> float:
        return self.values.get(value, 0.0)

    def _samples(self) -> list[str]:
        out = []
        for value, count in sorted(self.values.items()):
            labels = dict(self.const_labels)
            if self.label:
                labels[self.label] = value
            out.append(f"{self.name}{_labels(labels)} {_fmt(count)}")
        return out


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help_text: str, const_labels: dict[str, str]):
        super().__init__(name, help_text, const_labels)
        self.value = 0.0

    def set(self, value: float) -> None:
        with self.lock:
            self.used = True
            self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        with self.lock:
            self.used = True
            self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def _samples(self) -> list[str]:
        return [f"{self.name}{_labels(self.const_labels)} {_fmt(self.value)}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]):
        super().__init__(name, help_text, {})
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        with self.lock:
            self.used = True
            self.sum += value
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1
                    break
            else:
                self.counts[-1] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)

    def _samples(self) -> list[str]:
        out, total = [], 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += n
            out.append(f'{self.name}_bucket{{le="{_fmt(bound)}"}} {total}')
        out.append(f"{self.name}_sum {_fmt(self.sum)}")
        out.append(f"{self.name}_count {total}")
        return out


class Registry:
    """The metrics of one server; `render()` is the `/metrics` body."""

    CONST = {"handler": "all"}

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> _Metric:
        with self._lock:
            existing = self._metrics.get(metric.name)
            if existing is not None:
                if type(existing) is not type(metric):
                    raise ValueError(f"metric {metric.name} registered twice with different types")
                return existing
            self._metrics[metric.name] = metric
            return metric

    def counter(self, name: str, help_text: str, label: str | None = None) -> Counter:
        return self._add(Counter(name, help_text, dict(self.CONST), label))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str) -> Gauge:
        return self._add(Gauge(name, help_text, dict(self.CONST)))  # type: ignore[return-value]

    def histogram(self, name: str, help_text: str, buckets: Sequence[float]) -> Histogram:
        return self._add(Histogram(name, help_text, buckets))  # type: ignore[return-value]

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            metrics = sorted(self._metrics.values(), key=lambda m: m.name)
        for metric in metrics:
            with metric.lock:
                if metric.used:
                    lines.extend(metric.render())
        return "\n".join(lines) + "\n"
