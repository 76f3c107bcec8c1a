"""A causal streaming transformer with preallocated ring KV caches (Mimi's and the DSM LMs').

Layer body (pre-norm): x += ls1 * SelfAttn(norm1(x)); [x += lsC * CrossAttn(norm_cross(x), src)];
x += ls2 * FFN(norm2(x)). Attention uses one bias-free fused `in_proj_weight` laid out [Q; K; V],
head-major, stacked `mult` times when weights change per step (the depformer); RoPE is applied in
float32. Parameter names follow Kyutai's checkpoints, so their state dicts load without renaming.

Streaming keeps, per layer, K/V rings of capacity `context` written in place; positions, masks and
RoPE tables are computed once per call and shared by all layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from dsm.nn.gemm import skinny_linear
from dsm.nn.rope import apply_rope, rope_tables

# One-shot attention over more than this many steps is computed in query blocks to bound memory.
_ONE_SHOT_BLOCK = 1024
_HALF = (torch.bfloat16, torch.float16)
# Fast streaming on CPU attends only over the filled part of a ring that no stream has wrapped yet;
# False: always over the whole ring (the steady state of long streams; `benchmarks/lm_step.py --full-ring`).
FILLED_SPAN_ON_CPU = True


@dataclass
class TransformerConfig:
    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int | list[int] = 2048
    causal: bool = True
    context: int | None = None
    norm: str = "layer_norm"  # layer_norm | layer_norm_f32 | rms_norm | rms_norm_f32
    gating: str = "none"  # none (GELU MLP) or an activation for a gated FFN: silu, gelu, ...
    positional_embedding: str = "rope"  # rope | rope_concat | sin | sin_rope | none
    max_period: float = 10_000.0
    positional_scale: float = 1.0
    layer_scale: float | None = None
    weights_per_step: int = 0
    weights_per_step_schedule: list[int] | None = None
    cross_attention: bool = False
    kv_repeat: int = 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def mult(self) -> int:
        """Number of weight sets per layer (1 unless weights change per step)."""
        if not self.weights_per_step:
            return 1
        if self.weights_per_step_schedule:
            return max(self.weights_per_step_schedule) + 1
        return self.weights_per_step

    def weight_index(self, step: int) -> int:
        if self.mult == 1:
            return 0
        return self.weights_per_step_schedule[step] if self.weights_per_step_schedule else step


# -- norms -----------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x * alpha / sqrt(mean(x^2) + eps), computed in float32 when `float32` is set."""

    def __init__(self, dim: int, eps: float, float32: bool):
        super().__init__()
        self.eps = eps
        self.float32 = float32
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.float32:
            x = x.float()
        var = self.eps + torch.mean(x**2, dim=-1, keepdim=True)
        return (x * (self.alpha.to(var) * torch.rsqrt(var))).to(dtype)


class LayerNormF32(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=1e-5)
    if kind == "layer_norm_f32":
        return LayerNormF32(dim, eps=1e-8)
    if kind == "rms_norm":
        return RMSNorm(dim, eps=1e-5, float32=False)
    if kind == "rms_norm_f32":
        return RMSNorm(dim, eps=1e-8, float32=True)
    raise ValueError(f"unknown norm {kind!r}")


def sin_embedding(positions: torch.Tensor, dim: int, max_period: float, dtype: torch.dtype) -> torch.Tensor:
    """[cos, sin] positional embedding of `positions` (any shape) -> [..., dim], in `dtype`."""
    half = dim // 2
    positions = positions.to(dtype)[..., None]
    adim = torch.arange(half, device=positions.device, dtype=dtype)
    period = torch.full([], max_period, device=positions.device, dtype=dtype)
    phase = positions / (period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


# -- layer pieces ----------------------------------------------------------------------------------


class LayerScale(nn.Module):
    """Per-channel learnt scale on a residual branch."""

    def __init__(self, dim: int, init: float = 1e-4):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class GatedFFN(nn.Module):
    """linear_out(act(gate) * up), with [gate | up] = linear_in(x) (keys `linear_in`, `linear_out`)."""

    def __init__(self, dim: int, dim_feedforward: int, activation: str):
        super().__init__()
        hidden = (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)
        self.activation = _activation(activation)

    def forward(self, x: torch.Tensor, linear=F.linear) -> torch.Tensor:
        h = linear(x, self.linear_in.weight)
        B, T, _ = h.shape
        h = h.view(B, T, 2, -1)
        return linear(self.activation(h[..., 0, :]) * h[..., 1, :], self.linear_out.weight)


def _activation(name: str):
    if name in ("sigmoid", "tanh", "relu"):
        return getattr(torch, name)
    if name in ("leaky_relu", "elu", "gelu", "silu", "mish", "softsign"):
        return getattr(F, name)
    if name == "identity":
        return lambda x: x
    raise ValueError(f"unknown activation {name!r}")


class Attention(nn.Module):
    """Self- or cross-attention with Kyutai's fused projection layout (stacked per step if `mult`)."""

    def __init__(self, dim: int, num_heads: int, mult: int = 1, kv_repeat: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.kv_heads = num_heads // kv_repeat
        self.kv_repeat = kv_repeat
        self.dim = dim
        kv_dim = (dim // num_heads) * self.kv_heads
        self.in_dim = dim + 2 * kv_dim
        self.in_proj_weight = nn.Parameter(torch.empty(mult * self.in_dim, dim))
        nn.init.kaiming_uniform_(self.in_proj_weight, a=5**0.5)  # as nn.Linear initialises its weight
        self.out_proj = nn.Linear(dim, mult * dim, bias=False)

    def in_weight(self, index: int) -> torch.Tensor:
        return self.in_proj_weight[index * self.in_dim : (index + 1) * self.in_dim]

    def out_weight(self, index: int) -> torch.Tensor:
        return self.out_proj.weight[index * self.dim : (index + 1) * self.dim]

    def split_qkv(self, projected: torch.Tensor):
        """[B, T, in_dim] -> q [B, H, T, D], k, v [B, H_kv, T, D]."""
        B, T, _ = projected.shape
        if self.kv_repeat == 1:
            q, k, v = projected.view(B, T, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            return q, k, v
        q = projected[..., : self.dim].view(B, T, self.num_heads, -1).transpose(1, 2)
        k, v = projected[..., self.dim :].view(B, T, 2, self.kv_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, H, T, D = x.shape
        return x.transpose(1, 2).reshape(B, T, H * D)

    def cross_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a cross-attention source [B, S, dim] -> [B, H, S, D] each."""
        B, S, _ = src.shape
        kv = F.linear(src, self.in_proj_weight[self.dim :])
        k, v = kv.view(B, S, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v


def _expand_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    B, H, T, D = x.shape
    return x[:, :, None].expand(B, H, n_rep, T, D).reshape(B, H * n_rep, T, D)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d, mult = cfg.d_model, cfg.mult
        self.mult = mult
        self.self_attn = Attention(d, cfg.num_heads, mult, cfg.kv_repeat)
        self.norm1 = make_norm(cfg.norm, d)
        self.norm2 = make_norm(cfg.norm, d)
        ff = cfg.dim_feedforward
        if cfg.gating == "none":
            if mult > 1 or isinstance(ff, list):
                raise ValueError("weights per step need a gated feed-forward")
            self.linear1 = nn.Linear(d, ff, bias=False)
            self.linear2 = nn.Linear(ff, d, bias=False)
            self.gating = None
        elif mult > 1:
            widths = ff if isinstance(ff, list) else [ff] * mult
            self.gating = nn.ModuleList(GatedFFN(d, w, cfg.gating) for w in widths)
        else:
            self.gating = GatedFFN(d, ff, cfg.gating)
        if cfg.cross_attention:
            self.cross_attention = Attention(d, cfg.num_heads)
            self.norm_cross = nn.LayerNorm(d, eps=1e-5)
        else:
            self.cross_attention = None
        identity = cfg.layer_scale is None
        self.layer_scale_1 = nn.Identity() if identity else LayerScale(d, cfg.layer_scale)
        self.layer_scale_2 = nn.Identity() if identity else LayerScale(d, cfg.layer_scale)
        if cfg.cross_attention:
            self.layer_scale_cross = nn.Identity() if identity else LayerScale(d, cfg.layer_scale)

    def product_weights(self) -> list[torch.Tensor]:
        """Every weight (per-step slices apart) this layer's streaming step multiplies by."""
        attn, mult = self.self_attn, self.mult
        weights = [attn.in_weight(m) for m in range(mult)] + [attn.out_weight(m) for m in range(mult)]
        if self.cross_attention is not None:
            ca = self.cross_attention
            weights += [ca.in_proj_weight[: ca.dim], ca.out_proj.weight]
        if self.gating is None:
            return weights + [self.linear1.weight, self.linear2.weight]
        gates = [self.gating] if mult == 1 else list(self.gating)
        return weights + [w for g in gates for w in (g.linear_in.weight, g.linear_out.weight)]

    def feed_forward(self, x: torch.Tensor, indices: list[int], linear) -> torch.Tensor:
        h = self.norm2(x)
        if self.gating is None:
            update = linear(F.gelu(linear(h, self.linear1.weight)), self.linear2.weight)
        elif self.mult == 1:
            update = self.gating(h, linear)
        else:
            update = torch.cat([self.gating[m](h[:, t : t + 1], linear) for t, m in enumerate(indices)], 1)
        return x.to(update.dtype) + self.layer_scale_2(update)


@dataclass
class TransformerState:
    """Streaming state of a whole transformer: per-layer K/V rings and per-stream positions."""

    keys: list[torch.Tensor]  # per layer [B, H_kv, capacity, Dh]
    values: list[torch.Tensor]
    offset: torch.Tensor  # [B] long, positions processed so far by each stream
    fast: bool = True  # skinny GEMMs for few rows; False reproduces the reference's kernels exactly
    step: int = 0  # host-side count of steps (selects per-step weights)
    cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer cross-attention K/V
    linear: Callable[..., torch.Tensor] | None = None  # stands in for the products (e.g. quantized ones)

    def reset(self, mask: torch.Tensor) -> None:
        self.offset.masked_fill_(mask, 0)
        self.step = 0


def cpu_attention_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype | None:
    """A faster dtype for streaming keys, values and attention than the model's: float32 for 16-bit
    models on CPU, whose 16-bit attention kernels are several times slower there (at twice the cache
    memory); None where the model's dtype is best."""
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return None


def _write_ring(ring: torch.Tensor, slots: torch.Tensor, new: torch.Tensor, active: torch.Tensor | None):
    """Write `new` [B, H, T, D] into `ring` [B, H, capacity, D] at `slots` [B, T], in place, only for
    active streams (an indexed put: no pass over the rest of the cache)."""
    rows = torch.arange(ring.shape[0], device=ring.device)[:, None].expand_as(slots)
    values = new.transpose(1, 2).to(ring.dtype)  # [B, T, H, D], the layout of ring[rows, :, slots]
    if active is not None:
        rows, slots, values = rows[active], slots[active], values[active]
    ring[rows, :, slots] = values


class Transformer(nn.Module):
    """Stack of `TransformerLayer`s with RoPE / sinusoidal positions and a causal context window."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.positional_embedding not in ("rope", "rope_concat", "sin", "sin_rope", "none"):
            raise ValueError(f"unknown positional embedding {cfg.positional_embedding!r}")
        self.cfg = cfg
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))

    @property
    def _rope(self) -> bool:
        return self.cfg.positional_embedding in ("rope", "rope_concat", "sin_rope")

    def capacity(self) -> int:
        if self.cfg.context is not None:
            return self.cfg.context
        if self.cfg.weights_per_step:
            return self.cfg.weights_per_step
        raise ValueError("a streaming transformer needs a context (or weights per step) to size its cache")

    def init_state(
        self, batch_size: int, fast: bool = True, attention_dtype: torch.dtype | None = None
    ) -> TransformerState:
        """Streaming state; keys, values (cross-attention's too) and attention are in `attention_dtype`
        (default: the model's dtype)."""
        weight = self.layers[0].self_attn.in_proj_weight
        cfg = self.cfg
        shape = (batch_size, cfg.num_heads // cfg.kv_repeat, self.capacity(), cfg.head_dim)
        dtype = attention_dtype or weight.dtype

        def ring() -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=weight.device)

        n = len(self.layers)
        offset = torch.zeros(batch_size, dtype=torch.long, device=weight.device)
        return TransformerState([ring() for _ in range(n)], [ring() for _ in range(n)], offset, fast)

    def forward(
        self,
        x: torch.Tensor,
        state: TransformerState | None = None,
        active: torch.Tensor | None = None,
        cross_src: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T, C]. With `state`, continue each stream; `active` ([B] bool) freezes the others.

        `cross_src` [B, S, C] feeds cross-attention layers; when streaming, its keys and values are
        computed on the first call and kept in the state (set `state.cross = None` to refresh them).
        """
        dtype = x.dtype
        B, T, C = x.shape
        cfg = self.cfg
        offset = torch.zeros(B, dtype=torch.long, device=x.device) if state is None else state.offset
        steps = torch.arange(T, device=x.device)
        if cfg.positional_embedding in ("sin", "sin_rope"):
            positions = steps.view(1, -1) + offset.view(-1, 1)
            x = x + cfg.positional_scale * sin_embedding(positions, C, cfg.max_period, x.dtype)
        cos = sin = None
        if self._rope:
            cos, sin = rope_tables(offset.float().view(-1, 1) + steps.float(), cfg.head_dim, cfg.max_period)
        first_step = 0 if state is None else state.step
        indices = [cfg.weight_index(first_step + t) for t in range(T)] if self.layers[0].mult > 1 else [0]
        if state is None:
            x = self._one_shot(x, cos, sin, indices, cross_src)
        else:
            x = self._streaming(x, state, active, cos, sin, indices, cross_src)
            state.step += T
        return x.to(dtype)

    # -- shared layer body ---------------------------------------------------------------------------
    def _layer(self, i, layer, x, cos, sin, indices, attend, linear, cross, matmul=False) -> torch.Tensor:
        attn = layer.self_attn
        h = layer.norm1(x)
        if layer.mult == 1:
            projected = linear(h, attn.in_weight(0))
        else:
            projected = torch.cat(
                [linear(h[:, t : t + 1], attn.in_weight(m)) for t, m in enumerate(indices)], dim=1
            )
        q, k, v = attn.split_qkv(projected)
        if cos is not None:
            if self.cfg.positional_embedding == "rope_concat":
                q, k = _rope_concat(q, cos, sin), _rope_concat(k, cos, sin)
            else:
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        merged = attn.merge_heads(attend(i, q, k, v))
        if layer.mult == 1:
            update = linear(merged, attn.out_weight(0))
        else:
            update = torch.cat(
                [linear(merged[:, t : t + 1], attn.out_weight(m)) for t, m in enumerate(indices)], dim=1
            )
        x = x.to(update.dtype) + layer.layer_scale_1(update)
        if layer.cross_attention is not None:
            ca = layer.cross_attention
            if cross is None:
                raise ValueError("this transformer has cross-attention layers: pass cross_src")
            ck, cv = cross[i]
            h = layer.norm_cross(x)
            cq = linear(h, ca.in_proj_weight[: ca.dim]).view(h.shape[0], h.shape[1], ca.num_heads, -1)
            cq = cq.transpose(1, 2).to(ck.dtype)
            if matmul and ck.dtype in _HALF:
                out = _matmul_attention(cq, ck, cv).to(h.dtype)
            else:
                out = F.scaled_dot_product_attention(cq, ck, cv).to(h.dtype)
            x = x + layer.layer_scale_cross(linear(ca.merge_heads(out), ca.out_proj.weight))
        return layer.feed_forward(x, indices, linear)

    def _cross_kv(
        self, cross_src: torch.Tensor | None, dtype: torch.dtype, kv_dtype: torch.dtype | None = None
    ):
        """Per layer cross-attention (keys, values) of a source; in `kv_dtype` if given (computed in that
        dtype from the weights), else in the model's `dtype` exactly as the reference does."""
        if cross_src is None or self.layers[0].cross_attention is None:
            return None
        kv_dtype = kv_dtype or dtype
        src = cross_src.to(kv_dtype)
        out = []
        for layer in self.layers:
            attn = layer.cross_attention
            if kv_dtype == dtype:
                out.append(attn.cross_kv(src))
                continue
            B, S, _ = src.shape
            kv = F.linear(src, attn.in_proj_weight[attn.dim :].to(kv_dtype))
            k, v = kv.view(B, S, 2, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            out.append((k, v))
        return out

    def _one_shot(self, x, cos, sin, indices, cross_src) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        steps = torch.arange(T, device=x.device)
        mask = None
        if cfg.causal:
            delta = steps[:, None] - steps[None, :]
            mask = delta >= 0
            if cfg.context is not None:
                mask = mask & (delta < cfg.context)
        repeat = cfg.kv_repeat

        def attend(_i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k, v = _expand_kv(k, repeat), _expand_kv(v, repeat)
            if T <= _ONE_SHOT_BLOCK or mask is None or cfg.context is None:
                return F.scaled_dot_product_attention(q, k, v, mask)
            outs = []
            for start in range(0, T, _ONE_SHOT_BLOCK):
                stop = min(T, start + _ONE_SHOT_BLOCK)
                lo = max(0, start - cfg.context + 1)
                qb, kb, vb = q[:, :, start:stop], k[:, :, lo:stop], v[:, :, lo:stop]
                outs.append(F.scaled_dot_product_attention(qb, kb, vb, mask[start:stop, lo:stop]))
            return torch.cat(outs, dim=2)

        cross = self._cross_kv(cross_src, x.dtype)
        for i, layer in enumerate(self.layers):
            x = self._layer(i, layer, x, cos, sin, indices, attend, F.linear, cross)
        return x

    def _streaming(self, x, state: TransformerState, active, cos, sin, indices, cross_src) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        capacity = self.capacity()
        offset = state.offset
        steps = torch.arange(T, device=x.device)
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
        valid = slot_pos[:, None, :] >= 0
        if cfg.causal:
            valid = valid & (gap >= 0)
            if cfg.context is not None:
                valid = valid & (gap < cfg.context)
        mask = valid[:, None]
        span = capacity
        if state.fast and FILLED_SPAN_ON_CPU and x.device.type == "cpu":
            # Until a stream wraps around the ring, position p sits in slot p and the slots past every
            # stream's position are empty: attend over the filled span only (a fresh stream's first
            # steps read a few slots instead of `capacity`).
            span = max(1, min(capacity, int(new_offset.max())))
            mask = mask[..., :span]
        if state.cross is None and cross_src is not None:
            state.cross = self._cross_kv(cross_src, x.dtype, state.keys[0].dtype if state.keys else None)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = state.keys[i], state.values[i]
            _write_ring(keys, write_idx, k, active)
            _write_ring(values, write_idx, v, active)
            keys, values = keys[:, :, :span], values[:, :, :span]
            keys, values = _expand_kv(keys, cfg.kv_repeat), _expand_kv(values, cfg.kv_repeat)
            if matmul and keys.dtype in _HALF:
                return _matmul_attention(q.to(keys.dtype), keys, values, mask).to(q.dtype)
            return F.scaled_dot_product_attention(q.to(keys.dtype), keys, values, mask).to(q.dtype)

        linear = state.linear or (skinny_linear if state.fast else F.linear)
        matmul = state.fast and x.device.type == "cpu"  # 16-bit attention as two products (CPU, fast)
        for i, layer in enumerate(self.layers):
            x = self._layer(i, layer, x, cos, sin, indices, attend, linear, state.cross, matmul)
        state.offset.copy_(new_offset)
        return x


def _matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of a few queries over a 16-bit cache as two batched products and a float32 softmax:
    on CPUs without 16-bit arithmetic, PyTorch's 16-bit SDPA kernel reads the cache at a third of the
    speed of its 16-bit matrix products (the scores are rounded to 16 bits before the softmax)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


def _rope_concat(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE with the two halves of each head as real and imaginary parts (`rope_concat`)."""
    half = x.shape[-1] // 2
    real, imag = x[..., :half].float(), x[..., half:].float()
    return torch.cat([(real * cos - imag * sin).to(x.dtype), (real * sin + imag * cos).to(x.dtype)], dim=-1)
