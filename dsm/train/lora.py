"""LoRA adapters on an LM's linear weights, as weight parametrizations.

Every targeted weight W (the ``weight`` of each `nn.Linear`, and the fused ``in_proj_weight`` of each
attention) becomes ``W + scaling * B @ A`` with A [rank, in] (Kaiming-uniform) and B [out, rank] (zeros),
so a fresh adapter leaves the model unchanged. The frozen W is kept as is; only A and B (and any
``train_also`` parameters) train. `merged_state_dict` folds the adapters back into plain weights under
the original key names, which is what a released checkpoint holds (model-spec §2.11).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from dsm.nn.transformer import Attention

_ORIGINAL = ".parametrizations."


class LoRA(nn.Module):
    """The parametrization W -> W + scaling * B @ A."""

    def __init__(self, out_features: int, in_features: int, rank: int, scaling: float, like: torch.Tensor):
        super().__init__()
        self.scaling = scaling
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=like.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=like.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


def lora_targets(model: nn.Module, prefixes: Sequence[str]) -> list[tuple[nn.Module, str, str]]:
    """(module, attribute, qualified parameter name) of every 2-D linear weight under the given name
    prefixes (an empty prefix matches everything); conditioners are never targeted."""
    out = []
    for name, module in model.named_modules():
        attrs = []
        if isinstance(module, nn.Linear):
            attrs.append("weight")
        elif isinstance(module, Attention):
            attrs.append("in_proj_weight")
        for attr in attrs:
            qualified = f"{name}.{attr}" if name else attr
            if qualified.startswith("condition_provider."):
                continue
            if any(qualified.startswith(p) for p in prefixes):
                out.append((module, attr, qualified))
    return out


def apply_lora(
    model: nn.Module,
    rank: int,
    scaling: float,
    prefixes: Sequence[str] = ("transformer.",),
    train_also: Sequence[str] = (),
) -> list[str]:
    """Freeze ``model``, add adapters to the targeted weights and unfreeze them (and ``train_also``
    parameters). Returns the adapted parameter names."""
    model.requires_grad_(False)
    targets = lora_targets(model, prefixes)
    if not targets:
        raise ValueError(f"LoRA: no linear weight matches the prefixes {list(prefixes)}")
    for module, attr, _ in targets:
        weight = getattr(module, attr)
        adapter = LoRA(weight.shape[0], weight.shape[1], rank, scaling, weight)
        parametrize.register_parametrization(module, attr, adapter)
    for name, param in model.named_parameters():
        if ".lora_A" in name or ".lora_B" in name or any(_plain_name(name).startswith(p) for p in train_also):
            param.requires_grad_(True)
    return [q for _, _, q in targets]


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRA) for m in model.modules())


def _plain_name(name: str) -> str:
    """``a.parametrizations.weight.original`` -> ``a.weight``."""
    if _ORIGINAL in name and name.endswith(".original"):
        head, tail = name.split(_ORIGINAL, 1)
        return f"{head}.{tail.removesuffix('.original')}"
    return name


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every adapter folded in (W + scaling * B @ A) under the plain key names;
    the model itself is not modified. Without adapters this is ``model.state_dict()``."""
    out: dict[str, torch.Tensor] = {}
    adapters: dict[str, list[LoRA]] = {}
    for name, module in model.named_modules():
        plists = getattr(module, "parametrizations", None)
        if plists is None:
            continue
        for attr, plist in plists.items():
            key = f"{name}.{attr}" if name else attr
            adapters[key] = [p for p in plist if isinstance(p, LoRA)]
    for key, value in model.state_dict().items():
        if ".lora_A" in key or ".lora_B" in key:
            continue
        plain = _plain_name(key)
        if plain in adapters:
            with torch.no_grad():
                merged = value.float()
                for adapter in adapters[plain]:
                    merged = merged + adapter.delta().float()
                value = merged.to(value.dtype)
        out[plain] = value.detach()
    return out
