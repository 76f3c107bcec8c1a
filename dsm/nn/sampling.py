"""Token sampling for the streaming engine: greedy argmax, or top-k / top-p sampling by exponential race.

The sampled path reproduces Kyutai's reference sampler draw for draw (model spec §3.5):

1. logits are cast to float32 and divided by the temperature;
2. probs = softmax over the last dim;
3. candidates: with ``top_p > 0`` the whole vocabulary sorted by decreasing probability, entries whose
   preceding cumulative mass already exceeds ``top_p`` zeroed and the rest renormalised (``top_k`` is
   then ignored, as in the reference); else with ``top_k > 0`` ``torch.topk(probs, min(top_k, V))``
   (sorted, descending); else the whole vocabulary in index order;
4. q ~ Exp(1) for every candidate of every row, pick argmax(p / q), map back to a vocabulary index.

A row whose temperature is <= 0 is greedy: argmax of the float32 logits, first index on ties.

RNG consumption (N rows = all leading dims of the logits flattened, k = number of candidates: min(top_k, V)
with top-k, V with top-p or without a filter):

- A generator draws one Exp(1) block of N_g x k values, N_g being the number of rows it serves, in row-major
  order, if and only if at least one of those rows has a temperature > 0; otherwise it draws nothing.
  Noise drawn for greedy rows is discarded.
- `sample`: a single generator (``None`` = the default generator of the logits' device) serves all N rows.
  With one temperature shared by every row this is exactly the reference's ``sample_token``: same draws,
  same tokens, same generator state afterwards. With per-row temperatures a sampled row gets the noise at its
  own position in the [N, k] block, so its token equals the reference's token for that row when the
  reference is run on the whole batch at that row's temperature.
- `sample_per_slot`: ``generators[b]`` serves the rows of ``logits[b]`` only, so a slot's tokens and its
  generator's state depend only on its own logits, temperature and generator, never on the other slots.
  ``None`` entries use the default generator, each such slot drawing its own block in slot order.

Per-row temperatures are read on the host (a device tensor costs one small copy to the host): all rows
sharing one positive temperature are scaled exactly like a scalar temperature; with several distinct
positive temperatures each row is scaled by its own value the way torch divides by a Python scalar on that
device (float32 division on CPU, multiplication by the float32 reciprocal on CUDA).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import torch

from dsm.errors import InputError

Temperature = float | Sequence[float] | torch.Tensor

__all__ = ["Temperature", "sample", "sample_per_slot"]


@dataclass(frozen=True)
class _Temps:
    """Temperatures resolved for one call."""

    host: torch.Tensor  # float32 [*batch] on CPU: every row's temperature
    scalar: float | None  # the single positive temperature, when all sampled rows share one
    rows: torch.Tensor | None  # float32, broadcastable to the logits: several distinct positive values
    greedy: torch.Tensor | None  # bool [*batch] on the logits' device; None unless some rows are greedy

    @property
    def any_sampled(self) -> bool:
        return self.scalar is not None or self.rows is not None


def sample(
    logits: torch.Tensor,
    temperature: Temperature,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    *,
    top_p: float = 0.0,
) -> torch.Tensor:
    """Draw one token per row of `logits` [..., V]; returns int64 [...].

    `temperature` is a number shared by all rows, or per-row values (a tensor or sequence) whose shape is a
    prefix of ``logits.shape[:-1]`` (e.g. [B] for logits [B, V] or [B, K, V]). Rows with temperature <= 0
    are greedy. `top_k` = 0 or `top_p` = 0 disables that filter. All rows draw from `generator` (the
    device's default generator when None); see the module docstring for the exact RNG consumption.
    """
    x = _float_logits(logits, min_dim=1)
    top_k, top_p = _check_filters(top_k, top_p)
    temps = _resolve_temperature(temperature, x.shape[:-1], x.device)
    if not temps.any_sampled:
        return x.argmax(dim=-1)
    p, index = _candidates(_scale(x, temps), top_k, top_p)
    flat = p.reshape(-1, p.shape[-1])
    if generator is None or _same_device(generator.device, flat.device):
        q = torch.empty_like(flat).exponential_(1, generator=generator)
    else:
        q = _exponential(flat.shape, flat.device, generator)
    return _finish(x, p, index, flat / q, temps)


def sample_per_slot(
    logits: torch.Tensor,
    temperature: Temperature,
    top_k: int,
    generators: Sequence[torch.Generator | None],
    *,
    top_p: float = 0.0,
) -> torch.Tensor:
    """Draw one token per row of `logits` [B, ..., V], slot b's noise coming from ``generators[b]``.

    Returns int64 [B, ...]. Softmax and filtering are batched; only the Exp(1) draws loop over the slots.
    A slot draws ``prod(logits.shape[1:-1]) * k`` values from its generator when any of its rows samples,
    nothing otherwise. A generator on another device than the logits draws there and the noise is copied.
    `temperature`, `top_k` and `top_p` are as in `sample`.
    """
    x = _float_logits(logits, min_dim=2)
    top_k, top_p = _check_filters(top_k, top_p)
    batch = x.shape[0]
    if isinstance(generators, torch.Generator) or not isinstance(generators, Sequence):
        raise InputError("generators must be a sequence with one torch.Generator (or None) per slot")
    if len(generators) != batch:
        raise InputError(f"got {len(generators)} generators for {batch} slots")
    for g in generators:
        if g is not None and not isinstance(g, torch.Generator):
            raise InputError(f"generators must hold torch.Generator or None, got {type(g).__name__}")
    temps = _resolve_temperature(temperature, x.shape[:-1], x.device)
    if not temps.any_sampled or x.numel() == 0:
        return x.argmax(dim=-1)
    p, index = _candidates(_scale(x, temps), top_k, top_p)
    draws = temps.host.reshape(batch, -1).gt(0).any(dim=1).tolist()
    block = p.shape[1:]
    idle = torch.ones(block, dtype=p.dtype, device=p.device)  # greedy slot: no draw, noise irrelevant
    q = torch.stack(
        [
            _exponential(block, p.device, g) if draw else idle
            for g, draw in zip(generators, draws, strict=True)
        ]
    )
    flat = p.reshape(-1, p.shape[-1])
    return _finish(x, p, index, flat / q.reshape(flat.shape), temps)


def _float_logits(logits: torch.Tensor, min_dim: int) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise InputError(f"logits must be floating point, got {logits.dtype}")
    if logits.dim() < min_dim:
        raise InputError(f"logits must have at least {min_dim} dims, got shape {tuple(logits.shape)}")
    if logits.shape[-1] == 0:
        raise InputError(f"logits have an empty vocabulary dim: shape {tuple(logits.shape)}")
    return logits.float()


def _check_filters(top_k: int, top_p: float) -> tuple[int, float]:
    if isinstance(top_k, bool):
        raise InputError(f"top_k must be an int, got {top_k!r}")
    try:
        top_k = operator.index(top_k)
    except TypeError:
        raise InputError(f"top_k must be an int, got {top_k!r}") from None
    if top_k < 0:
        raise InputError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if isinstance(top_p, bool) or not isinstance(top_p, Real) or not 0.0 <= float(top_p) <= 1.0:
        raise InputError(f"top_p must be a number in [0, 1] (0 disables it), got {top_p!r}")
    return top_k, float(top_p)


def _resolve_temperature(temperature: Temperature, batch: torch.Size, device: torch.device) -> _Temps:
    if isinstance(temperature, Real) and not isinstance(temperature, bool):
        value = float(temperature)
        if not math.isfinite(value):
            raise InputError(f"temperature must be finite, got {value}")
        host = torch.full(batch, value, dtype=torch.float32)
        return _Temps(host, value if value > 0 else None, None, None)
    if isinstance(temperature, torch.Tensor):
        if temperature.is_complex() or temperature.dtype == torch.bool:
            raise InputError(f"temperature must be real, got dtype {temperature.dtype}")
        given = temperature.detach()
    elif isinstance(temperature, Sequence) and not isinstance(temperature, str | bytes):
        if not all(isinstance(t, Real) and not isinstance(t, bool) for t in temperature):
            raise InputError("temperature sequence must hold numbers")
        given = torch.tensor([float(t) for t in temperature], dtype=torch.float32)
    else:
        kind = type(temperature).__name__
        raise InputError(f"temperature must be a number, a sequence or a tensor, got {kind}")
    shape = tuple(given.shape)
    if len(shape) > len(batch) or shape != tuple(batch[: len(shape)]):
        raise InputError(
            f"temperature shape {shape} must be a prefix of the logits' batch shape {tuple(batch)}"
        )
    host = given.to("cpu", torch.float32)
    if not bool(torch.isfinite(host).all()):
        raise InputError(f"temperature must be finite, got {host.tolist()}")
    trailing = (1,) * (len(batch) - len(shape))
    host = host.reshape(shape + trailing).expand(batch)
    positive = host[host > 0].unique()
    if positive.numel() == 0:
        return _Temps(host, None, None, None)
    greedy = None
    if bool((host <= 0).any()):
        greedy = given.to(device, torch.float32).le(0).reshape(shape + trailing).expand(batch)
    if positive.numel() == 1:
        return _Temps(host, float(positive[0]), None, greedy)
    rows = given.to(device, torch.float32)
    rows = torch.where(rows > 0, rows, torch.ones_like(rows)).reshape(shape + trailing + (1,))
    return _Temps(host, None, rows, greedy)


def _scale(x: torch.Tensor, temps: _Temps) -> torch.Tensor:
    """logits / temperature, bit for bit as torch evaluates a division by a Python scalar."""
    if temps.rows is None:
        return x / temps.scalar
    if x.device.type == "cuda":  # CUDA turns `tensor / python_scalar` into `tensor * (1 / scalar)`
        return x * temps.rows.reciprocal()
    return x / temps.rows


def _candidates(scaled: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(probabilities [..., k], their vocabulary indices [..., k] or None for the identity)."""
    probs = torch.softmax(scaled, dim=-1)
    if top_p > 0.0:
        p, index = torch.sort(probs, dim=-1, descending=True)
        mass_before = torch.cumsum(p, dim=-1) - p
        p = p.masked_fill(mass_before > top_p, 0.0)
        return p / p.sum(dim=-1, keepdim=True), index
    if top_k > 0:
        p, index = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
        return p, index
    return probs, None


def _exponential(
    shape: Sequence[int], device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Exp(1) noise of `shape` on `device`, drawn on the generator's own device."""
    where = device if generator is None else generator.device
    q = torch.empty(tuple(shape), dtype=torch.float32, device=where).exponential_(1, generator=generator)
    return q.to(device)


def _finish(
    x: torch.Tensor, p: torch.Tensor, index: torch.Tensor | None, race: torch.Tensor, temps: _Temps
) -> torch.Tensor:
    """Winner of the race [N, k] per row, mapped to the vocabulary; greedy rows take argmax(x)."""
    choice = race.argmax(dim=-1).reshape(*p.shape[:-1], 1)
    tokens = (choice if index is None else index.gather(-1, choice))[..., 0]
    if temps.greedy is not None:
        tokens = torch.where(temps.greedy, x.argmax(dim=-1), tokens)
    return tokens


def _same_device(a: torch.device, b: torch.device) -> bool:
    return (a.type, a.index or 0) == (b.type, b.index or 0)
