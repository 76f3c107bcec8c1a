"""The DSM language model: a temporal transformer over K = 1 + n_q parallel token streams, and a small
"depformer" that samples the audio codebooks of one step one after the other.

Row 0 of a token grid [B, K, T] is text, rows 1..n_q are audio codebooks. Token -1 embeds to exactly
zero; -2 marks ungenerated positions (the engine never feeds them to the model). Parameter names are
Kyutai's, so published checkpoints load as they are (`dsm.lm.loader`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dsm.errors import InputError
from dsm.lm.conditioners import ConditionFuser, ConditionProvider
from dsm.lm.config import LMConfig
from dsm.nn.quant import WeightOnlyLinear
from dsm.nn.transformer import Transformer, TransformerState, make_norm

ZERO_TOKEN = -1
UNGENERATED_TOKEN = -2


class StreamEmbedding(nn.Embedding):
    """Token embedding where -1 gives a zero vector; optional low-rank projection, or the demuxed
    second-stream form of TTS text (token = (second + 1) * N + first, each part embedded)."""

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        low_rank: int | None = None,
        demux: bool = False,
        norm: bool = False,
    ):
        super().__init__(num_embeddings, low_rank or dim)
        self.norm = nn.LayerNorm(self.embedding_dim, eps=1e-5) if norm else None
        self.low_rank = nn.Linear(low_rank, dim, bias=False) if low_rank is not None else None
        self.demux = demux
        if demux:
            self.out1 = nn.Linear(low_rank or dim, dim, bias=False)
            self.out2 = nn.Linear(low_rank or dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        is_zero = (tokens == ZERO_TOKEN)[..., None]
        zero = torch.zeros(1, dtype=tokens.dtype, device=tokens.device)
        tokens = tokens.clamp(min=0)
        if self.demux:
            first = super().forward(tokens % self.num_embeddings)
            second = tokens // self.num_embeddings - 1
            second_absent = (second < 0)[..., None]
            second = super().forward(second.clamp(min=0))
            y = self.out1(first) + torch.where(second_absent, zero, self.out2(second))
            return torch.where(is_zero, zero, y)
        y = super().forward(tokens)
        if self.norm is not None:
            y = self.norm(y)
        y = torch.where(is_zero, zero, y)
        if self.low_rank is not None:
            y = self.low_rank(y)
        return y


@dataclass
class LMOutput:
    """Training-style forward: logits aligned with the input codes, NaN (and mask False) where a
    stream's delay leaves no prediction, or where the code is -1."""

    logits: torch.Tensor | None  # [B, dep_q, T, card]
    mask: torch.Tensor | None  # [B, dep_q, T]
    text_logits: torch.Tensor  # [B, 1, T, text_card_out]
    text_mask: torch.Tensor  # [B, 1, T]


class LMModel(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.ModuleList(
            StreamEmbedding(cfg.card + 1, cfg.dim, norm=cfg.norm_emb) for _ in range(cfg.n_q)
        )
        self.text_emb = StreamEmbedding(
            cfg.text_card + 1, cfg.dim, demux=cfg.demux_second_text_stream, norm=cfg.norm_emb
        )
        self.text_linear = nn.Linear(cfg.dim, cfg.text_out, bias=cfg.bias_proj)
        self.transformer = Transformer(cfg.temporal())
        self.out_norm = make_norm(cfg.norm, cfg.dim)
        n_in = cfg.dep_q
        if cfg.depformer_multi_linear and cfg.depformer_weights_per_step_schedule:
            n_in = max(cfg.depformer_weights_per_step_schedule) + 1
        if not cfg.depformer_multi_linear:
            n_in = 1
        self.depformer_in = nn.ModuleList(
            nn.Linear(cfg.dim, cfg.depformer_dim, bias=False) for _ in range(n_in)
        )
        if cfg.dep_q > 0:
            low_rank = cfg.depformer_low_rank_embeddings
            self.depformer_emb = nn.ModuleList(
                StreamEmbedding(cfg.card + 1, cfg.depformer_dim, low_rank, norm=cfg.norm_emb)
                for _ in range(cfg.dep_q - 1)
            )
            self.depformer_text_emb = StreamEmbedding(
                cfg.text_card + 1,
                cfg.depformer_dim,
                low_rank,
                demux=cfg.demux_second_text_stream,
                norm=cfg.norm_emb,
            )
            self.depformer_norms = nn.ModuleList(
                nn.Identity()
                if cfg.depformer_norm is None
                else make_norm(cfg.depformer_norm, cfg.depformer_dim)
                for _ in range(cfg.dep_q)
            )
            self.depformer = Transformer(cfg.depformer())
        else:
            self.depformer_emb = self.depformer_text_emb = self.depformer = None
        self.extra_heads = nn.ModuleList(
            nn.Linear(cfg.dim, cfg.extra_heads_dim, bias=False) for _ in range(cfg.extra_heads_num_heads)
        )
        self.linears = nn.ModuleList(
            nn.Linear(cfg.depformer_dim, cfg.card, bias=cfg.bias_proj) for _ in range(cfg.dep_q)
        )
        self.condition_provider = (
            ConditionProvider.from_config(cfg.conditioners, cfg.dim) if cfg.conditioners else None
        )
        self.fuser = ConditionFuser.from_config(cfg.fuser) if cfg.fuser else None

    # -- sizes and special tokens ---------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.text_linear.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_linear.weight.device

    def quantized_linear(self, kind: str) -> WeightOnlyLinear:
        """The product of this model's streaming steps on weights converted to `kind` (one of
        `dsm.nn.quant.KINDS`), made (and its weights converted) once per model and kind."""
        cache = self.__dict__.setdefault("_quantized_linears", {})
        if kind not in cache:
            if self.device.type != "cpu":
                raise InputError(f"{kind} quantized products run on CPU only (model on {self.device})")
            linear = WeightOnlyLinear(kind)
            linear.prepare(self.product_weights())
            cache[kind] = linear
        return cache[kind]

    def product_weights(self) -> list[torch.Tensor]:
        """The weights the streaming step multiplies by (temporal and depth transformers, depformer
        input projections and heads); not the embeddings, nor the text head, which picks the tokens
        (quantized, it flipped 15 % of the small test model's greedy tokens, for ~1 % of the weights)."""
        weights = [w for layer in self.transformer.layers for w in layer.product_weights()]
        if self.depformer is not None:
            weights += [w for layer in self.depformer.layers for w in layer.product_weights()]
            weights += [m.weight for m in self.depformer_in] + [m.weight for m in self.linears]
        return weights

    def initial_tokens(self) -> torch.Tensor:
        """[1, K, 1]: text_card for text, card for every audio codebook."""
        cfg = self.cfg
        tokens = torch.full((1, cfg.num_codebooks, 1), cfg.card, dtype=torch.long, device=self.device)
        tokens[:, 0] = cfg.text_card
        return tokens

    # -- temporal transformer -------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor, sum_condition: torch.Tensor | None = None) -> torch.Tensor:
        """[B, K, S] tokens -> [B, S, dim]: audio embeddings in codebook order, then text, then the
        summed condition, each added in the model dtype (the reference's order)."""
        x = None
        for q in range(self.cfg.n_q):
            e = self.emb[q](tokens[:, q + 1])
            x = e if x is None else x + e
        text = self.text_emb(tokens[:, 0])
        x = text if x is None else x + text
        if sum_condition is not None:
            x = x + sum_condition.to(x)
        return x

    def forward_text(
        self,
        tokens: torch.Tensor,
        state: TransformerState | None = None,
        active: torch.Tensor | None = None,
        sum_condition: torch.Tensor | None = None,
        cross_src: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Temporal pass: tokens [B, K, S] -> (hidden after out_norm [B, S, dim], text logits
        [B, 1, S, text_out]). With `state`, streams continue from their caches."""
        x = self.embed(tokens, sum_condition)
        if cross_src is not None:
            cross_src = cross_src.to(x)
        hidden = self.out_norm(self.transformer(x, state, active, cross_src))
        return hidden, self.text_linear(hidden)[:, None]

    def extra_head_probs(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Softmax of each extra head (e.g. the semantic VAD) on the temporal hidden state."""
        return [torch.softmax(head(hidden), dim=-1) for head in self.extra_heads]

    # -- depformer -------------------------------------------------------------------------------
    def depformer_input(self, codebook: int, hidden: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Input of depformer position `codebook`: projected hidden state + embedding of the token
        before it (the text token for codebook 0, else audio codebook `codebook - 1`)."""
        cfg = self.cfg
        index = 0
        if cfg.depformer_multi_linear:
            schedule = cfg.depformer_weights_per_step_schedule
            index = schedule[codebook] if schedule is not None else codebook
        projected = self.depformer_in[index](hidden)
        if codebook == 0:
            token = self.depformer_text_emb(previous)
        else:
            token = self.depformer_emb[codebook - 1](previous)
        return projected + token

    def depformer_logits(self, codebook: int, out: torch.Tensor) -> torch.Tensor:
        return self.linears[codebook](self.depformer_norms[codebook](out))

    # -- training-style forward ------------------------------------------------------------------
    def forward(
        self,
        codes: torch.Tensor,
        sum_condition: torch.Tensor | None = None,
        cross_src: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> LMOutput:
        """Teacher-forced logits for codes [B, K, T] (the reference's `LMModel.forward`).

        `inputs` [B, K, T]: what the temporal transformer reads instead of `codes` (training only; the
        depformer and the logits' alignment still follow `codes`), e.g. a CFG null item's withheld text
        (its text row -1: generation's null branch with `cfg_is_no_text` still gives the depformer the
        step's text token) or noised audio history."""
        cfg = self.cfg
        B, K, T = codes.shape
        if K != cfg.num_codebooks:
            raise ValueError(f"expected {cfg.num_codebooks} streams, got {K}")
        initial = self.initial_tokens().expand(B, -1, -1)
        delayed = delay_streams(codes, cfg.delays, initial)
        delayed = torch.cat([initial, delayed], dim=2)
        fed = delayed
        if inputs is not None:
            if inputs.shape != codes.shape:
                raise ValueError(f"inputs must have the shape of codes {list(codes.shape)}")
            fed = torch.cat([initial, delay_streams(inputs, cfg.delays, initial)], dim=2)
        hidden, text_logits = self.forward_text(
            fed[:, :, :-1], sum_condition=sum_condition, cross_src=cross_src
        )
        logits = mask = None
        if cfg.dep_q > 0:
            targets = delayed[:, :, 1:]
            # Position c sees the target of stream c: the text for c = 0, else audio codebook c - 1.
            inputs = [self.depformer_input(c, hidden, targets[:, c]) for c in range(cfg.dep_q)]
            dep_in = torch.stack(inputs, 2).view(B * T, cfg.dep_q, -1)
            dep_out = self.depformer(dep_in)
            logits = torch.stack(
                [self.depformer_logits(c, dep_out[:, c]).view(B, T, -1) for c in range(cfg.dep_q)], 1
            )
            logits, mask = undelay_streams(logits, cfg.delays[1 : 1 + cfg.dep_q])
            mask &= codes[:, 1 : 1 + cfg.dep_q] != ZERO_TOKEN
        text_logits, text_mask = undelay_streams(text_logits, cfg.delays[:1])
        text_mask &= codes[:, :1] != ZERO_TOKEN
        return LMOutput(logits, mask, text_logits, text_mask)


def delay_streams(codes: torch.Tensor, delays: list[int], initial: torch.Tensor) -> torch.Tensor:
    """Shift row k of [B, K, T] right by delays[k], filling the gap with that row's initial token."""
    rows = []
    for k, delay in enumerate(delays):
        row = codes[:, k].roll(delay, dims=1)
        if delay > 0:
            row[:, :delay] = initial[:, k]
        rows.append(row)
    return torch.stack(rows, dim=1)


def undelay_streams(values: torch.Tensor, delays: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo `delay_streams` on [B, K, T, ...]: NaN and mask False on the last delays[k] steps."""
    B, K, T = values.shape[:3]
    mask = torch.ones(B, K, T, dtype=torch.bool, device=values.device)
    if all(d == 0 for d in delays):
        return values, mask
    rows = []
    for k, delay in enumerate(delays):
        row = values[:, k].roll(-delay, dims=1)
        if delay > 0:
            row[:, -delay:] = float("nan")
            mask[:, k, -delay:] = False
        rows.append(row)
    return torch.stack(rows, dim=1), mask
