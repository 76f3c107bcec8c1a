"""A causal streaming transformer with a preallocated ring KV cache (used by Mimi).

Layer body (pre-norm): x += ls1 * SelfAttn(norm1(x)); x += ls2 * FFN(norm2(x)). Attention uses one
fused bias-free `in_proj_weight` [3*d, d] laid out [Q; K; V], head-major, interleaved RoPE in float32,
and a causal mask limited to `context` steps. Streaming keeps, per layer, K/V rings of capacity
`context` written in place; positions and masks are computed once per call and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from dsm.nn.gemm import skinny_linear
from dsm.nn.rope import apply_rope, rope_tables

# One-shot attention over more than this many steps is computed in query blocks to bound memory.
_ONE_SHOT_BLOCK = 1024


class LayerScale(nn.Module):
    """Per-channel learnt scale on a residual branch."""

    def __init__(self, dim: int, init: float = 1e-4):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


@dataclass
class TransformerState:
    """Streaming state of a whole transformer: per-layer K/V rings and per-stream positions."""

    keys: list[torch.Tensor]  # per layer [B, H, capacity, Dh]
    values: list[torch.Tensor]
    offset: torch.Tensor  # [B] long, positions processed so far by each stream
    fast: bool = True  # skinny GEMMs for few rows; False reproduces the reference's kernels exactly

    def reset(self, mask: torch.Tensor) -> None:
        self.offset.masked_fill_(mask, 0)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def qkv(self, x: torch.Tensor, linear=F.linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        projected = linear(x, self.in_proj_weight).view(B, T, 3, self.num_heads, -1)
        q, k, v = projected.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def out(self, x: torch.Tensor, linear=F.linear) -> torch.Tensor:
        B, H, T, D = x.shape
        return linear(x.transpose(1, 2).reshape(B, T, H * D), self.out_proj.weight)


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, layer_scale: float | None):
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.linear1 = nn.Linear(dim, dim_feedforward, bias=False)
        self.linear2 = nn.Linear(dim_feedforward, dim, bias=False)
        if layer_scale is None:
            self.layer_scale_1: nn.Module = nn.Identity()
            self.layer_scale_2: nn.Module = nn.Identity()
        else:
            self.layer_scale_1 = LayerScale(dim, layer_scale)
            self.layer_scale_2 = LayerScale(dim, layer_scale)

    def feed_forward(self, x: torch.Tensor, linear=F.linear) -> torch.Tensor:
        update = linear(F.gelu(linear(self.norm2(x), self.linear1.weight)), self.linear2.weight)
        return x.to(update.dtype) + self.layer_scale_2(update)


def _write_ring(
    ring: torch.Tensor, index: torch.Tensor, new: torch.Tensor, active: torch.Tensor | None
) -> None:
    """Write `new` [B, H, T, D] into `ring` at slots `index`, leaving inactive streams untouched."""
    if active is not None:
        new = torch.where(active.view(-1, 1, 1, 1), new, ring.gather(2, index))
    ring.scatter_(2, index, new)


class Transformer(nn.Module):
    """Stack of `TransformerLayer`s with RoPE and a causal context window."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        context: int,
        max_period: float = 10_000.0,
        layer_scale: float | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.context = context
        self.max_period = max_period
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, num_heads, dim_feedforward, layer_scale) for _ in range(num_layers)
        )

    def init_state(self, batch_size: int, fast: bool = True) -> TransformerState:
        weight = self.layers[0].self_attn.in_proj_weight
        shape = (batch_size, self.num_heads, self.context, self.head_dim)

        def ring() -> torch.Tensor:
            return torch.zeros(shape, dtype=weight.dtype, device=weight.device)

        n = len(self.layers)
        offset = torch.zeros(batch_size, dtype=torch.long, device=weight.device)
        return TransformerState([ring() for _ in range(n)], [ring() for _ in range(n)], offset, fast)

    def forward(
        self,
        x: torch.Tensor,
        state: TransformerState | None = None,
        active: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T, C]. With `state`, continue each stream; `active` ([B] bool) freezes the others."""
        if state is None:
            return self._forward_one_shot(x)
        return self._forward_streaming(x, state, active)

    def _layer(
        self,
        layer: TransformerLayer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend,
        linear=F.linear,
    ) -> torch.Tensor:
        attn = layer.self_attn
        q, k, v = attn.qkv(layer.norm1(x), linear)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        update = attn.out(attend(q, k, v), linear)
        x = x.to(update.dtype) + layer.layer_scale_1(update)
        return layer.feed_forward(x, linear)

    def _forward_one_shot(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        positions = torch.arange(T, device=x.device, dtype=torch.float32).expand(B, T)
        cos, sin = rope_tables(positions, self.head_dim, self.max_period)
        steps = torch.arange(T, device=x.device)
        delta = steps[:, None] - steps[None, :]
        mask = (delta >= 0) & (delta < self.context)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if T <= _ONE_SHOT_BLOCK:
                return F.scaled_dot_product_attention(q, k, v, mask)
            outs = []
            for start in range(0, T, _ONE_SHOT_BLOCK):
                stop = min(T, start + _ONE_SHOT_BLOCK)
                lo = max(0, start - self.context + 1)
                block_mask = mask[start:stop, lo:stop]
                outs.append(
                    F.scaled_dot_product_attention(
                        q[:, :, start:stop], k[:, :, lo:stop], v[:, :, lo:stop], block_mask
                    )
                )
            return torch.cat(outs, dim=2)

        for layer in self.layers:
            x = self._layer(layer, x, cos, sin, attend)
        return x

    def _forward_streaming(
        self, x: torch.Tensor, state: TransformerState, active: torch.Tensor | None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        capacity = self.context
        offset = state.offset
        steps = torch.arange(T, device=x.device)
        positions = offset.float().view(-1, 1) + steps.float()
        cos, sin = rope_tables(positions, self.head_dim, self.max_period)

        # Ring slots written this call, then the absolute position held by every slot afterwards.
        write_idx = (offset.view(-1, 1) + steps) % capacity  # [B, T]
        slots = torch.arange(capacity, device=x.device)
        last = offset.view(-1, 1) + T - 1
        delta = slots - last % capacity
        slot_pos = torch.where(delta <= 0, last + delta, last + delta - capacity)
        new_offset = offset + T if active is None else torch.where(active, offset + T, offset)
        slot_pos = torch.where(slots >= new_offset.view(-1, 1), -1, slot_pos)
        query_pos = offset.view(-1, 1, 1) + steps.view(-1, 1)  # [B, T, 1]
        gap = query_pos - slot_pos[:, None, :]
        mask = ((slot_pos[:, None, :] >= 0) & (gap >= 0) & (gap < self.context))[:, None]
        scatter_idx = write_idx.view(B, 1, T, 1).expand(B, self.num_heads, T, self.head_dim)

        for i, layer in enumerate(self.layers):
            keys, values = state.keys[i], state.values[i]

            def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                _write_ring(keys, scatter_idx, k, active)  # noqa: B023 (called within this iteration)
                _write_ring(values, scatter_idx, v, active)  # noqa: B023
                return F.scaled_dot_product_attention(q, keys, values, mask)  # noqa: B023

            x = self._layer(layer, x, cos, sin, attend, skinny_linear if state.fast else F.linear)
        state.offset.copy_(new_offset)
        return x
