"""Load DSM language models from Kyutai's safetensors checkpoints and `config.json`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from dsm.codec.loader import check_state_dict, read_safetensors
from dsm.errors import CheckpointError
from dsm.lm.config import LMConfig
from dsm.lm.model import LMModel

_STACKED = re.compile(r"^(.*\.(?:self_attn|cross_attention))\.(in_projs|out_projs)\.(\d+)\.weight$")


def normalize_lm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the reference's alternative attention names onto Kyutai's fused, stacked layout:
    `in_proj.weight` -> `in_proj_weight`; per-step `in_projs.{i}.weight` / `out_projs.{i}.weight`
    -> one tensor stacked along dim 0 (`in_proj_weight`, `out_proj.weight`)."""
    out: dict[str, torch.Tensor] = {}
    pieces: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        match = _STACKED.match(key)
        if match:
            pieces.setdefault((match.group(1), match.group(2)), {})[int(match.group(3))] = value
            continue
        out[re.sub(r"\.in_proj\.weight$", ".in_proj_weight", key)] = value
    for (prefix, kind), parts in pieces.items():
        name = f"{prefix}.in_proj_weight" if kind == "in_projs" else f"{prefix}.out_proj.weight"
        out[name] = torch.cat([parts[i] for i in sorted(parts)], dim=0)
    return out


def read_config(path: str | Path) -> LMConfig:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: config file not found") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid JSON config ({e})") from e
    try:
        return LMConfig.from_kyutai(raw)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _is_condition_key(key: str) -> bool:
    return key.startswith("condition_provider.") or key.startswith("fuser.")


def build_lm(
    config: LMConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16
) -> LMModel:
    """A randomly initialised model (conditioners in float32, the rest in `dtype`)."""
    with torch.device(device):
        model = LMModel(config)
    model.to(dtype)
    if model.condition_provider is not None:
        model.condition_provider.float()
    return model.eval()


def load_lm(
    weights: str | Path,
    config: LMConfig | str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> LMModel:
    """Build the model of `config` on the meta device (no random init) and load `weights`.

    Floating tensors are cast to `dtype` (bfloat16 by default, as the reference does), except the
    condition provider's, which stay float32. Missing, unexpected or mis-shaped tensors raise a
    `CheckpointError` naming them.
    """
    if not isinstance(config, LMConfig):
        config = read_config(config)
    state = normalize_lm_keys(read_safetensors(weights))
    with torch.device("meta"):
        model = LMModel(config)
    check_state_dict(model, state, str(weights))
    for key, value in state.items():
        if value.is_floating_point():
            value = value.float() if _is_condition_key(key) else value.to(dtype)
        state[key] = value.to(device)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
