"""Rotary position embeddings (interleaved pairs), computed in float32 as Kyutai's models expect."""

from __future__ import annotations

import math

import torch


def rope_tables(
    positions: torch.Tensor, head_dim: int, max_period: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for float32 `positions` [B, T]; each result is [B, 1, T, head_dim // 2]."""
    ds = torch.arange(head_dim // 2, device=positions.device, dtype=torch.float32)
    freqs = torch.exp(ds * (-math.log(max_period) * 2 / head_dim))
    angles = freqs * positions[:, None, :, None]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of `x` [B, H, T, D] by the given angles; float32 math, cast back."""
    B, H, T, D = x.shape
    pairs = x.view(B, H, T, D // 2, 2)
    real, imag = pairs[..., 0].float(), pairs[..., 1].float()
    out_real = real * cos - imag * sin
    out_imag = real * sin + imag * cos
    return torch.stack([out_real.to(x.dtype), out_imag.to(x.dtype)], dim=-1).view(B, H, T, D)
