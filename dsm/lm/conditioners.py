"""Conditioning of DSM language models (TTS): lookup-table and tensor conditioners, and their fuser.

Parameter names match Kyutai's checkpoints under `condition_provider.conditioners.<name>.`:
`embed.weight` (LUT only), `output_proj.weight` and `learnt_padding`. Conditioner weights stay in
float32 even when the LM runs in bfloat16; callers cast the fused `sum` / `cross` tensors themselves.

Usage (TTS-1.6b)::

    provider = ConditionProvider.from_config(config["conditioners"], output_dim=lm_dim)
    fuser = ConditionFuser.from_config(config["fuser"])
    attrs = ConditionAttributes(text={"control": "ok", "cfg": "2.0"},
                                tensor={"speaker_wavs": TensorCondition.from_tensor(voice)})
    conditions = provider([attrs])           # {name: Condition(emb [B, T, D], mask [B, T])}
    sum_, cross = fuser.get_sum(conditions), fuser.get_cross(conditions)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from dsm.errors import CheckpointError, InputError

# Keys of a conditioner's config sub-dict that only shape the (unused) initialisation or that the
# reference loader overwrites itself (`output_dim`, `device`): accepted and ignored.
_IGNORED_KEYS = frozenset({"output_dim", "device", "pad_empty"})
_COMMON_KEYS = frozenset({"dim", "force_linear", "output_bias", "learn_padding"}) | _IGNORED_KEYS
_LUT_KEYS = _COMMON_KEYS | {"n_bins", "tokenizer", "possible_values", "init_scale"}
_TENSOR_KEYS = _COMMON_KEYS
_FUSER_KEYS = frozenset(
    {"sum", "cross", "prepend", "cross_attention_pos_emb", "cross_attention_pos_emb_scale"}
)


class Condition(NamedTuple):
    """A conditioner's output: `emb` [B, T, D] (float32) and `mask` [B, T] (bool, False = padding)."""

    emb: torch.Tensor
    mask: torch.Tensor


class TensorCondition(NamedTuple):
    """A tensor-valued conditioning input: `tensor` [B, T, dim] and `mask` [B, T] (bool).

    One `ConditionAttributes` holds B = 1 (a 2-D [T, dim] tensor and [T] mask are accepted too).
    """

    tensor: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> TensorCondition:
        """Wrap `tensor` ([T, dim] or [B, T, dim]) with an all-True mask."""
        if tensor.dim() == 2:
            tensor = tensor[None]
        if tensor.dim() != 3:
            raise InputError(f"a tensor condition must be [T, dim] or [B, T, dim], got {tuple(tensor.shape)}")
        return cls(tensor, torch.ones(tensor.shape[:2], dtype=torch.bool, device=tensor.device))

    def null(self) -> TensorCondition:
        """The dropped condition used for classifier-free guidance: zeros with an all-False mask."""
        return TensorCondition(torch.zeros_like(self.tensor), torch.zeros_like(self.mask, dtype=torch.bool))

    @staticmethod
    def cat(items: Sequence[TensorCondition | None], dim: int) -> TensorCondition:
        """Collate single-item conditions into [B, T_max, dim], right-padded with zeros and False.

        `None` stands for an absent condition of length 0 (all padding after collation).
        """
        present = [item for item in items if item is not None]
        for item in present:
            if item.tensor.shape[-1] != dim:
                raise InputError(f"tensor condition must be [B, T, {dim}], got {tuple(item.tensor.shape)}")
        ref = present[0].tensor if present else None
        device = ref.device if ref is not None else None
        length = max((item.tensor.shape[1] for item in present), default=0)
        tensor = torch.zeros(len(items), length, dim, dtype=torch.float32, device=device)
        mask = torch.zeros(len(items), length, dtype=torch.bool, device=device)
        for b, item in enumerate(items):
            if item is not None:
                tensor[b, : item.tensor.shape[1]] = item.tensor[0]
                mask[b, : item.mask.shape[1]] = item.mask[0]
        return TensorCondition(tensor, mask)


TensorInput = TensorCondition | tuple | torch.Tensor | None


def _as_tensor_condition(name: str, value: TensorInput) -> TensorCondition | None:
    """Normalise one item's tensor input to a [1, T, dim] / [1, T] `TensorCondition` (or None)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        tensor, mask = value, None
    elif isinstance(value, tuple) and len(value) == 2:
        tensor, mask = value
    else:
        raise InputError(f"tensor condition {name!r} must be a TensorCondition, (tensor, mask) or a tensor")
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (2, 3) or not tensor.is_floating_point():
        raise InputError(f"tensor condition {name!r} must be a float tensor [T, dim] or [1, T, dim]")
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.shape[0] != 1:
        raise InputError(f"tensor condition {name!r} holds one batch item, got shape {tuple(tensor.shape)}")
    if mask is None:
        mask = torch.ones(tensor.shape[:2], dtype=torch.bool, device=tensor.device)
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"the mask of tensor condition {name!r} must be a tensor")
    if mask.dim() == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(tensor.shape[:2]):
        raise InputError(
            f"the mask of tensor condition {name!r} has shape {tuple(mask.shape)}, "
            f"expected {tuple(tensor.shape[:2])}"
        )
    return TensorCondition(tensor, mask.bool())


@dataclass
class ConditionAttributes:
    """The conditioning of one batch item: text values (None = absent) and tensor inputs.

    `tensor` values may be a `TensorCondition`, a `(tensor, mask)` pair, a bare tensor (all-True mask)
    or None (absent, i.e. zero length). Attributes that no conditioner uses are ignored.
    """

    text: dict[str, str | None] = field(default_factory=dict)
    tensor: dict[str, TensorInput] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.text.items():
            if value is not None and not isinstance(value, str):
                kind = type(value).__name__
                raise InputError(f"text condition {name!r} must be a string or None, got {kind}")
        self.tensor = {name: _as_tensor_condition(name, value) for name, value in self.tensor.items()}

    def null(self) -> ConditionAttributes:
        """All conditions dropped (classifier-free guidance): text -> None, tensors -> zeros, masks False."""
        tensor = {k: None if v is None else _as_tensor_condition(k, v).null() for k, v in self.tensor.items()}
        return ConditionAttributes(text=dict.fromkeys(self.text), tensor=tensor)


def null_attributes(attributes: Sequence[ConditionAttributes]) -> list[ConditionAttributes]:
    """`ConditionAttributes.null()` of every item (the reference's `dropout_all_conditions`)."""
    return [attrs.null() for attrs in attributes]


class _Conditioner(nn.Module):
    """Shared output projection and learnt padding: out = proj(x) * m + learnt_padding * (1 - m)."""

    def __init__(
        self,
        dim: int,
        output_dim: int,
        force_linear: bool,
        learn_padding: bool,
        device: torch.device | str | None,
    ):
        super().__init__()
        self.dim = dim
        self.output_dim = output_dim
        self.output_proj: nn.Module
        if force_linear or dim != output_dim:
            self.output_proj = nn.Linear(dim, output_dim, bias=False, device=device)
        else:
            self.output_proj = nn.Identity()
        self.learnt_padding: nn.Parameter | None = None
        if learn_padding:
            self.learnt_padding = nn.Parameter(0.2 * torch.randn(1, 1, output_dim, device=device))

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.parameters(), None)
        return (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)

    def _project(self, x: torch.Tensor, mask: torch.Tensor) -> Condition:
        out = self.output_proj(x)
        keep = mask.float()[..., None]
        if self.learnt_padding is None:
            return Condition(out * keep, mask)
        return Condition(out * keep + self.learnt_padding * (1 - keep), mask)


class LUTConditioner(_Conditioner):
    """A text value from a fixed set -> one embedding row -> [B, 1, output_dim].

    Row `n_bins` of `embed` is the padding row used for None (mask False). Without `possible_values`
    a value is mapped by `sha256(value) % n_bins` (the reference's hash trick).
    """

    def __init__(
        self,
        n_bins: int,
        dim: int,
        output_dim: int,
        possible_values: Sequence[str] | None = None,
        *,
        init_scale: float = 1.0,
        force_linear: bool = True,
        learn_padding: bool = True,
        device: torch.device | str | None = None,
    ):
        super().__init__(dim, output_dim, force_linear, learn_padding, device)
        if possible_values is not None and len(possible_values) > n_bins:
            count = len(possible_values)
            raise CheckpointError(f"LUT conditioner has {count} possible values for {n_bins} bins")
        self.n_bins = n_bins
        self.possible_values = None if possible_values is None else list(possible_values)
        # Like the reference, a repeated value maps to its last index.
        self._index = None if possible_values is None else {v: i for i, v in enumerate(possible_values)}
        self.embed = nn.Embedding(n_bins + 1, dim, device=device)
        with torch.no_grad():
            self.embed.weight.mul_(init_scale)

    def tokenize(self, values: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Values -> (indices [B, 1] long, mask [B, 1] bool) on CPU; None -> (n_bins, False)."""
        indices = []
        for value in values:
            if value is None:
                indices.append(self.n_bins)
            elif self._index is None:
                indices.append(int(hashlib.sha256(value.encode("utf-8")).hexdigest(), 16) % self.n_bins)
            elif value in self._index:
                indices.append(self._index[value])
            else:
                raise InputError(f"{value!r} is not a valid value; allowed values: {self.possible_values}")
        tokens = torch.tensor(indices, dtype=torch.long)[:, None]
        mask = torch.tensor([value is not None for value in values], dtype=torch.bool)[:, None]
        return tokens, mask

    def forward(self, values: Sequence[str | None]) -> Condition:
        """Embed a batch of values: `Condition(emb [B, 1, output_dim], mask [B, 1])`."""
        tokens, mask = self.tokenize(values)
        device = self.embed.weight.device
        tokens, mask = tokens.to(device), mask.to(device)
        return self._project(self.embed(tokens), mask)


class TensorConditioner(_Conditioner):
    """A [B, T, dim] tensor with mask [B, T] -> projected [B, T, output_dim], learnt padding where masked."""

    def __init__(
        self,
        dim: int,
        output_dim: int,
        *,
        force_linear: bool = True,
        learn_padding: bool = True,
        device: torch.device | str | None = None,
    ):
        super().__init__(dim, output_dim, force_linear, learn_padding, device)

    def forward(self, condition: TensorCondition) -> Condition:
        """Project a collated `TensorCondition` (tensor [B, T, dim], mask [B, T])."""
        tensor, mask = condition
        if tensor.dim() != 3 or tensor.shape[-1] != self.dim or tuple(mask.shape) != tuple(tensor.shape[:2]):
            raise InputError(
                f"tensor condition must be [B, T, {self.dim}] with mask [B, T], "
                f"got {tuple(tensor.shape)} and {tuple(mask.shape)}"
            )
        device, dtype = self._device_dtype()
        return self._project(tensor.to(device=device, dtype=dtype), mask.to(device=device, dtype=torch.bool))


Conditioner = LUTConditioner | TensorConditioner


def _check_keys(name: str, cfg: Mapping[str, Any], allowed: frozenset[str], required: Sequence[str]) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise CheckpointError(f"conditioner {name!r}: unsupported config keys {unknown}")
    missing = [key for key in required if key not in cfg]
    if missing:
        raise CheckpointError(f"conditioner {name!r}: missing config keys {missing}")
    for key in ("dim", "n_bins"):
        if key in cfg and (not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1):
            raise CheckpointError(f"conditioner {name!r}: {key} must be a positive integer, got {cfg[key]!r}")
    if cfg.get("output_bias", False):
        raise CheckpointError(f"conditioner {name!r}: output_bias is not supported (nor by the reference)")


def build_conditioner(
    name: str, cfg: Mapping[str, Any], output_dim: int, device: torch.device | str | None = None
) -> Conditioner:
    """One conditioner from its config.json entry `{"type": "lut"|"tensor", "<type>": {...}}`."""
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise CheckpointError(f"conditioner {name!r}: expected an object with a 'type' key, got {cfg!r}")
    kind = cfg["type"]
    if kind not in ("lut", "tensor"):
        raise CheckpointError(
            f"conditioner {name!r}: unknown conditioner type {kind!r} (expected 'lut' or 'tensor')"
        )
    sub = cfg.get(kind)
    if not isinstance(sub, Mapping):
        raise CheckpointError(f"conditioner {name!r}: missing the {kind!r} settings object")
    common = {
        "force_linear": bool(sub.get("force_linear", True)),
        "learn_padding": bool(sub.get("learn_padding", True)),
        "device": device,
    }
    if kind == "tensor":
        _check_keys(name, sub, _TENSOR_KEYS, ["dim"])
        return TensorConditioner(sub["dim"], output_dim, **common)
    _check_keys(name, sub, _LUT_KEYS, ["n_bins", "dim"])
    if sub.get("tokenizer", "noop") != "noop":
        tokenizer = sub["tokenizer"]
        raise CheckpointError(f"conditioner {name!r}: unsupported tokenizer {tokenizer!r} (only 'noop')")
    values = sub.get("possible_values")
    if values is not None and (
        isinstance(values, str)
        or not isinstance(values, Sequence)
        or not all(isinstance(v, str) for v in values)
    ):
        raise CheckpointError(
            f"conditioner {name!r}: possible_values must be a list of strings, got {values!r}"
        )
    return LUTConditioner(
        sub["n_bins"], sub["dim"], output_dim, values, init_scale=float(sub.get("init_scale", 1.0)), **common
    )


class ConditionProvider(nn.Module):
    """All conditioners of an LM (`conditioners.<name>`), mapping batches of attributes to `Condition`s."""

    def __init__(self, conditioners: Mapping[str, Conditioner]):
        super().__init__()
        self.conditioners = nn.ModuleDict(dict(conditioners))

    @classmethod
    def from_config(
        cls, conditioners: Mapping[str, Any], output_dim: int, device: torch.device | str | None = None
    ) -> ConditionProvider:
        """Build from config.json's `conditioners` object; `output_dim` is the LM dim."""
        if not isinstance(conditioners, Mapping):
            raise CheckpointError(f"'conditioners' must be an object, got {type(conditioners).__name__}")
        return cls(
            {name: build_conditioner(name, cfg, output_dim, device) for name, cfg in conditioners.items()}
        )

    @property
    def text_conditions(self) -> list[str]:
        """Names of the LUT (text-valued) conditioners."""
        return [name for name, c in self.conditioners.items() if isinstance(c, LUTConditioner)]

    @property
    def tensor_conditions(self) -> list[str]:
        """Names of the tensor-valued conditioners."""
        return [name for name, c in self.conditioners.items() if isinstance(c, TensorConditioner)]

    def collate(
        self, attributes: Sequence[ConditionAttributes]
    ) -> dict[str, list[str | None] | TensorCondition]:
        """Per conditioner, the batch of its inputs: a list of values, or a right-padded `TensorCondition`."""
        if isinstance(attributes, ConditionAttributes) or not attributes:
            raise InputError("expected a non-empty list of ConditionAttributes")
        for attrs in attributes:
            if not isinstance(attrs, ConditionAttributes):
                raise InputError(f"expected ConditionAttributes, got {type(attrs).__name__}")
        out: dict[str, list[str | None] | TensorCondition] = {}
        for name, conditioner in self.conditioners.items():
            is_text = isinstance(conditioner, LUTConditioner)
            kind, other = ("text", "tensor") if is_text else ("tensor", "text")
            items = []
            for b, attrs in enumerate(attributes):
                values = attrs.text if is_text else attrs.tensor
                if name not in values:
                    hint = f" (it was given as a {other} condition)" if name in getattr(attrs, other) else ""
                    raise InputError(f"batch item {b} lacks the {kind} condition {name!r}{hint}")
                items.append(values[name] if is_text else _as_tensor_condition(name, values[name]))
            out[name] = items if is_text else TensorCondition.cat(items, conditioner.dim)
        return out

    def forward(self, attributes: Sequence[ConditionAttributes]) -> dict[str, Condition]:
        """`{name: Condition(emb [B, T, output_dim], mask [B, T])}` for a batch of attributes."""
        return {name: self.conditioners[name](batch) for name, batch in self.collate(attributes).items()}


class ConditionFuser(nn.Module):
    """Combines conditions into the LM inputs: `sum` ([B, 1, D], added to every step's input embedding)
    and `cross` ([B, T, D], the cross-attention source, plus an optional sinusoidal position embedding).
    """

    def __init__(
        self,
        sum: Sequence[str] = (),
        cross: Sequence[str] = (),
        cross_attention_pos_emb: bool = False,
        cross_attention_pos_emb_scale: float = 1.0,
    ):
        super().__init__()
        self.sum_conditions = list(sum)
        self.cross_conditions = list(cross)
        self.cross_attention_pos_emb = bool(cross_attention_pos_emb)
        self.cross_attention_pos_emb_scale = cross_attention_pos_emb_scale

    @classmethod
    def from_config(cls, fuser: Mapping[str, Any]) -> ConditionFuser:
        """Build from config.json's (non-null) `fuser` object; only an empty `prepend` is supported."""
        if not isinstance(fuser, Mapping):
            raise CheckpointError(f"'fuser' must be an object, got {type(fuser).__name__}")
        unknown = sorted(set(fuser) - _FUSER_KEYS)
        if unknown:
            raise CheckpointError(f"fuser: unsupported config keys {unknown}")
        if fuser.get("prepend"):
            raise CheckpointError(f"fuser: 'prepend' conditioning is not supported, got {fuser['prepend']!r}")
        for key in ("sum", "cross"):
            names = fuser.get(key, [])
            if isinstance(names, str) or not isinstance(names, Sequence):
                raise CheckpointError(f"fuser: {key!r} must be a list of condition names, got {names!r}")
        scale = fuser.get("cross_attention_pos_emb_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise CheckpointError(f"fuser: cross_attention_pos_emb_scale must be a number, got {scale!r}")
        return cls(
            fuser.get("sum", []),
            fuser.get("cross", []),
            bool(fuser.get("cross_attention_pos_emb", False)),
            scale,
        )

    @property
    def names(self) -> list[str]:
        """Every condition name the fuser reads."""
        return self.sum_conditions + self.cross_conditions

    @property
    def has_conditions(self) -> bool:
        """Whether the fuser reads any condition."""
        return bool(self.names)

    @staticmethod
    def _get(conditions: Mapping[str, Condition], name: str) -> torch.Tensor:
        if name not in conditions:
            raise InputError(f"condition {name!r} is missing (got {sorted(conditions)})")
        return conditions[name][0]

    def get_sum(self, conditions: Mapping[str, Condition]) -> torch.Tensor | None:
        """Σ of the `sum` conditions, in list order ([B, 1, D]); None when there are none."""
        total = None
        for name in self.sum_conditions:
            emb = self._get(conditions, name)
            if emb.shape[1] != 1:
                raise InputError(f"sum condition {name!r} must have length 1, got shape {tuple(emb.shape)}")
            total = emb if total is None else total + emb
        return total

    def get_cross(self, conditions: Mapping[str, Condition]) -> torch.Tensor | None:
        """The `cross` conditions concatenated along time ([B, T, D]); None when there are none."""
        if not self.cross_conditions:
            return None
        cross = torch.cat([self._get(conditions, name) for name in self.cross_conditions], dim=1)
        if self.cross_attention_pos_emb:
            pos_emb = sin_embedding(cross.shape[1], cross.shape[-1], device=cross.device).to(cross.dtype)
            cross = cross + self.cross_attention_pos_emb_scale * pos_emb
        return cross


def sin_embedding(
    length: int, dim: int, max_period: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Sinusoidal embedding [1, length, dim] of positions 0..length-1, computed in float32.

    [cos(φ), sin(φ)] with φ_i = pos / max_period^(i / (half - 1)), half = dim / 2 (note: half - 1).
    """
    if dim % 2 or dim < 4:
        raise InputError(f"sinusoidal embedding needs an even dim >= 4, got {dim}")
    half = dim // 2
    pos = torch.arange(length, device=device, dtype=torch.float32).view(1, -1, 1)
    freq = torch.arange(half, device=device, dtype=torch.float32).view(1, 1, -1)
    period = torch.full([], max_period, device=device, dtype=torch.float32) ** (freq / (half - 1))
    phase = pos / period
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)
