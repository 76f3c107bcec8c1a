"""Load and save Mimi weights in Kyutai's safetensors layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dsm.codec.mimi import Mimi, MimiConfig
from dsm.errors import CheckpointError, InputError

# A codec directory (`dsm train codec`'s export, dsm's bundled codec): weights and architecture.
WEIGHTS_NAME = "mimi.safetensors"
CONFIG_NAME = "mimi_config.json"

# Older names of the same tensors, mapped to the names dsm (and Kyutai's current code) uses.
_RENAMES = [
    (re.compile(r"\.self_attn\.in_proj\.weight$"), ".self_attn.in_proj_weight"),
    (re.compile(r"\.self_attn\.in_projs\.0\.weight$"), ".self_attn.in_proj_weight"),
    (re.compile(r"\.self_attn\.out_projs\.0\.weight$"), ".self_attn.out_proj.weight"),
    (re.compile(r"\._codebook\.inited$"), "._codebook._initialized"),
    (re.compile(r"\._codebook\.cluster_size$"), "._codebook.cluster_usage"),
    (re.compile(r"\._codebook\.embed_(avg|sum)$"), "._codebook.embedding_sum"),
]


_ALIGNMENT = 64  # bytes; what torch's CPU allocator guarantees


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map legacy tensor names onto the current Kyutai layout."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    # Tensors come back as views into the file's buffer, only 8-byte aligned. BLAS picks different
    # kernels for unaligned operands, whose float rounding differs from the reference's (freshly
    # allocated, 64-byte aligned) weights: copy those into aligned storage.
    for key, value in state.items():
        if value.data_ptr() % _ALIGNMENT:
            state[key] = value.clone()
    return state


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a `CheckpointError` listing missing, unexpected and mis-shaped tensors."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mis_shaped):
        return

    def show(names: list[str]) -> str:
        head = ", ".join(names[:8])
        return head + (f", ... ({len(names)} in all)" if len(names) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    if mis_shaped:
        parts.append(f"wrong shapes: {show(mis_shaped)}")
    raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))


def read_mimi_config(path: str | Path) -> MimiConfig:
    """A codec architecture from a ``mimi_config.json`` file (`MimiConfig.to_dict`'s form)."""
    path = Path(path)
    try:
        return MimiConfig.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, InputError) as e:
        raise CheckpointError(f"{path}: not a valid Mimi config ({e})") from e


def load_mimi(
    source: str | Path,
    config: MimiConfig | None = None,
    device: str | torch.device = "cpu",
    num_codebooks: int | None = None,
) -> Mimi:
    """Build Mimi and load a Kyutai-layout safetensors checkpoint, in float32, eval mode.

    ``source`` is a weights file, or a codec directory holding ``mimi.safetensors`` and, for another
    architecture than Kyutai's, ``mimi_config.json`` (what `dsm train codec` exports); an explicit
    ``config`` wins. The model is built on the meta device, so no time is spent on random
    initialisation. ``num_codebooks`` (default: all) is how many codebooks `encode` returns. Parameters
    come frozen (inference); call `requires_grad_(True)` to fine-tune.
    """
    source = Path(source)
    if source.is_dir():
        if config is None and (source / CONFIG_NAME).is_file():
            config = read_mimi_config(source / CONFIG_NAME)
        source = source / WEIGHTS_NAME
    state = normalize_keys(read_safetensors(source))
    with torch.device("meta"):
        model = Mimi(config or MimiConfig())
    check_state_dict(model, state, str(source))
    state = {k: v.to(device=device, dtype=torch.float32) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.set_num_codebooks(model.total_codebooks if num_codebooks is None else num_codebooks)
    return model.eval().requires_grad_(False)


def save_mimi(model: Mimi, path: str | Path) -> None:
    """Write Mimi's weights as a Kyutai-layout safetensors file."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))
