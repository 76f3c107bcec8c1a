"""A lean depformer step for streaming generation (the engine's fast mode).

Per generation step the depformer samples the audio codebooks one after the other: codebook c reads the
temporal hidden state (through `depformer_in`) and the token sampled for c - 1, and attends over the
positions 0..c of this step only. The generic streaming transformer handles that with a ring cache,
position bookkeeping and masks, and the modules' generic forwards; this runner does the same arithmetic
with far fewer operations, which is what a step of a few rows costs on CPU:

- keys and values go to preallocated buffers [rows, heads, dep_q, head_dim] at position c, and attention
  reads positions 0..c without a mask (in `attention_dtype` if given, by default float32 for 16-bit
  models on CPU, see `dsm.nn.transformer.cpu_attention_dtype`);
- each distinct `depformer_in` projection of the weight schedule is computed once per step (11 for
  TTS-1.6b's 32 codebooks, not 32): it depends on the hidden state only;
- the audio-token embeddings (low-rank table + projection) are expanded once per model into full tables,
  so an embedding is one row lookup;
- norms are fused (`F.rms_norm` / `F.layer_norm`) and float32 products of few rows take the skinny GEMM
  form (`dsm.nn.gemm`).

With `exact=True` the runner keeps the reference's kernels and operand shapes instead (`F.linear`, the
norm modules, per-token embeddings, attention over all dep_q slots with a mask), which reproduces the
generic path, and so the reference, bit for bit; it still saves most of the bookkeeping.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from dsm.lm.model import ZERO_TOKEN, LMModel
from dsm.nn.gemm import SKINNY_ROWS, derived_tensors
from dsm.nn.transformer import LayerNormF32, LayerScale, RMSNorm, cpu_attention_dtype

Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_TABLES: weakref.WeakKeyDictionary[LMModel, list[torch.Tensor]] = weakref.WeakKeyDictionary()


def supports_fast_depformer(model: LMModel) -> bool:
    """Whether `FastDepformer` covers this model's depformer (no positions, no cross-attention, no GQA,
    known norms)."""
    dep = model.depformer
    if dep is None:
        return False
    cfg = dep.cfg
    norms = [m for layer in dep.layers for m in (layer.norm1, layer.norm2)] + list(model.depformer_norms)
    known = all(isinstance(m, RMSNorm | nn.LayerNorm | nn.Identity) for m in norms)
    return known and cfg.positional_embedding == "none" and not cfg.cross_attention and cfg.kv_repeat == 1


def _norm(module: nn.Module, exact: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fused equivalent of a norm module, for 2-D inputs (`exact`: the module itself)."""
    if isinstance(module, nn.Identity):
        return lambda x: x
    if exact:
        return lambda x: module(x[:, None])[:, 0]
    if isinstance(module, RMSNorm):
        weight = module.alpha.reshape(-1)
        shape, eps, f32 = (weight.shape[0],), module.eps, module.float32
        w32 = weight.float()

        def rms(x: torch.Tensor) -> torch.Tensor:
            if not f32:
                return F.rms_norm(x, shape, weight.to(x.dtype), eps)
            return F.rms_norm(x.float(), shape, w32, eps).to(x.dtype)

        return rms
    f32 = isinstance(module, LayerNormF32)
    assert isinstance(module, nn.LayerNorm)

    def layer_norm(x: torch.Tensor) -> torch.Tensor:
        y = x.float() if f32 else x
        return F.layer_norm(y, module.normalized_shape, module.weight, module.bias, module.eps).to(x.dtype)

    return layer_norm


def _scale(module: nn.Module) -> torch.Tensor | None:
    return module.scale if isinstance(module, LayerScale) else None


def _audio_tables(model: LMModel) -> list[torch.Tensor]:
    """Per audio codebook c >= 1 of the depformer, the embedding of every token [card + 1, dim] (computed
    in float32: 16-bit products of that size are slow on CPUs without 16-bit arithmetic)."""
    tables = _TABLES.get(model)
    if tables is None:
        device = model.text_linear.weight.device
        dtype = model.text_linear.weight.dtype
        with derived_tensors():
            tokens = torch.arange(model.cfg.card + 1, device=device)
            tables = [copy.deepcopy(emb).float()(tokens).to(dtype) for emb in model.depformer_emb]
        _TABLES[model] = tables
    return tables


class FastDepformer:
    """Samples `dep_q` codebooks for `rows` streams (2x the slots under CFG) in one generation step.
    `linear` replaces the products (e.g. `dsm.nn.quant.WeightOnlyLinear`)."""

    def __init__(
        self,
        model: LMModel,
        rows: int,
        dep_q: int,
        exact: bool = False,
        attention_dtype: torch.dtype | None = None,
        linear: Linear | None = None,
    ):
        if not supports_fast_depformer(model):
            raise ValueError("this depformer needs the generic streaming path")
        self.model = model
        dep = model.depformer
        tcfg = dep.cfg
        cfg = model.cfg
        self.rows, self.dep_q = rows, dep_q
        self.heads, self.head_dim = tcfg.num_heads, tcfg.head_dim
        self.dim = tcfg.d_model
        self.sets = [tcfg.weight_index(c) for c in range(dep_q)]
        if cfg.depformer_multi_linear:
            schedule = cfg.depformer_weights_per_step_schedule
            self.in_sets = [schedule[c] if schedule is not None else c for c in range(dep_q)]
        else:
            self.in_sets = [0] * dep_q
        weight = model.text_linear.weight
        shape = (rows, self.heads, dep_q, self.head_dim)
        # float32 attention for 16-bit models on CPU unless told otherwise: over at most dep_q slots the
        # 16-bit SDPA kernel's fixed cost dominates, and the float32 buffers are small.
        dtype = attention_dtype or (None if exact else cpu_attention_dtype(weight.dtype, weight.device))
        dtype = dtype or weight.dtype
        self.keys = [torch.zeros(shape, dtype=dtype, device=weight.device) for _ in dep.layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=weight.device) for _ in dep.layers]
        self.exact = exact
        skinny = weight.dtype == torch.float32 and weight.device.type == "cpu" and rows <= SKINNY_ROWS
        self.linear: Linear = linear or (_skinny if skinny and not exact else F.linear)
        self.tables = None if exact else _audio_tables(model)
        self.layers = [_Layer(layer, exact) for layer in dep.layers]
        self.out_norms = [_norm(m, exact) for m in model.depformer_norms]
        # Exact mode: attention over all slots, later ones masked, as the generic streaming path does.
        slots = torch.arange(dep_q, device=weight.device)
        self.masks = [(slots <= c).view(1, 1, 1, dep_q) for c in range(dep_q)] if exact else None

    def __call__(
        self,
        first: torch.Tensor,
        hidden: torch.Tensor,
        pick: Callable[[int, torch.Tensor], torch.Tensor],
        codebooks: int | None = None,
    ) -> torch.Tensor:
        """first: [rows] token before codebook 0 (the text); hidden: [rows, 1, dim] temporal output;
        pick(c, logits [rows, card]) -> the tokens of codebook c for the B streams ([B]; under CFG, rows
        = 2B and the null rows read the same tokens). Returns [B, dep_q]; with `codebooks`, only the first
        `codebooks` are sampled and the others are ZERO_TOKEN."""
        model = self.model
        linear = self.linear
        rows, heads, head_dim = self.rows, self.heads, self.head_dim
        hidden = hidden.reshape(rows, -1)
        count = self.dep_q if codebooks is None else codebooks
        in_sets = self.in_sets[:count]
        projections = {s: linear(hidden, model.depformer_in[s].weight) for s in dict.fromkeys(in_sets)}
        tokens = []
        previous = first
        for c in range(count):
            if c == 0:
                emb = model.depformer_text_emb(previous[:, None])[:, 0]
            elif self.tables is None:
                emb = model.depformer_emb[c - 1](previous[:, None])[:, 0]
            else:
                emb = self.tables[c - 1].index_select(0, previous)
            x = projections[self.in_sets[c]] + emb
            s = self.sets[c]
            for i, layer in enumerate(self.layers):
                qkv = linear(layer.norm1(x), layer.in_weight[s]).reshape(rows, 3, heads, head_dim)
                keys, values = self.keys[i], self.values[i]
                keys[:, :, c] = qkv[:, 1]
                values[:, :, c] = qkv[:, 2]
                q = qkv[:, 0, :, None].to(keys.dtype)
                if self.masks is None:
                    out = F.scaled_dot_product_attention(q, keys[:, :, : c + 1], values[:, :, : c + 1])
                else:
                    out = F.scaled_dot_product_attention(q, keys, values, self.masks[c])
                update = linear(out.reshape(rows, -1).to(x.dtype), layer.out_weight[s])
                x = x + (update if layer.scale1 is None else layer.scale1 * update)
                update = layer.feed_forward(layer.norm2(x), s, linear)
                x = x + (update if layer.scale2 is None else layer.scale2 * update)
            head = model.linears[c]
            logits = linear(self.out_norms[c](x), head.weight)
            if head.bias is not None:
                logits = logits + head.bias
            token = pick(c, logits)
            tokens.append(token)
            previous = token if token.shape[0] == rows else token.repeat(rows // token.shape[0])
        out = torch.stack(tokens, dim=1)
        if count < self.dep_q:
            out = F.pad(out, (0, self.dep_q - count), value=ZERO_TOKEN)
        return out


class _Layer:
    """One depformer layer's weights, split per weight set, with fused norms."""

    def __init__(self, layer: nn.Module, exact: bool):
        attn = layer.self_attn
        mult = layer.mult
        self.in_weight = [attn.in_weight(m) for m in range(mult)]
        self.out_weight = [attn.out_weight(m) for m in range(mult)]
        self.norm1, self.norm2 = _norm(layer.norm1, exact), _norm(layer.norm2, exact)
        self.scale1, self.scale2 = _scale(layer.layer_scale_1), _scale(layer.layer_scale_2)
        if layer.gating is None:
            self.ffn = [(layer.linear1.weight, layer.linear2.weight, F.gelu, False)]
        else:
            gates = [layer.gating] if mult == 1 else list(layer.gating)
            self.ffn = [(g.linear_in.weight, g.linear_out.weight, g.activation, True) for g in gates]

    def feed_forward(self, h: torch.Tensor, weight_set: int, linear: Linear) -> torch.Tensor:
        w_in, w_out, activation, gated = self.ffn[weight_set if len(self.ffn) > 1 else 0]
        up = linear(h, w_in)
        if gated:
            up = up.reshape(h.shape[0], 2, -1)
            return linear(activation(up[:, 0]) * up[:, 1], w_out)
        return linear(activation(up), w_out)


def _skinny(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [rows, in] @ weight^T as weight @ x^T (weight streamed once; see dsm.nn.gemm)."""
    return torch.mm(weight, x.t()).t()
