"""Causal SEANet encoder and decoder (Mimi's convolutional front and back ends).

Module indices mirror Kyutai's `encoder.model.<i>` / `decoder.model.<i>` key layout, with ELUs kept
as (parameter-free) list entries so the numbering matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dsm.nn.conv import StreamingConv1d, StreamingConvTranspose1d


def _init_states(modules: nn.ModuleList, batch_size: int, fast: bool) -> list:
    """One state slot per module: the streaming state of stateful ones, None for activations."""
    return [m.init_state(batch_size, fast) if hasattr(m, "init_state") else None for m in modules]


def _run(modules: nn.ModuleList, x: torch.Tensor, states: list | None, active: torch.Tensor | None):
    for i, module in enumerate(modules):
        if hasattr(module, "init_state"):
            x = module(x, None if states is None else states[i], active)
        else:
            x = module(x)
    return x


class ResBlock(nn.Module):
    """x + conv1x1(ELU(conv3(ELU(x)))), the identity shortcut of SEANet with `true_skip`."""

    def __init__(self, channels: int, kernel_size: int = 3, compress: int = 2):
        super().__init__()
        hidden = channels // compress
        self.block = nn.ModuleList(
            [
                nn.ELU(),
                StreamingConv1d(channels, hidden, kernel_size),
                nn.ELU(),
                StreamingConv1d(hidden, channels, 1),
            ]
        )

    def init_state(self, batch_size: int, fast: bool = True) -> list:
        return _init_states(self.block, batch_size, fast)

    def forward(self, x: torch.Tensor, state: list | None = None, active: torch.Tensor | None = None):
        return x + _run(self.block, x, state, active)


class _SeanetStack(nn.Module):
    """A list of streaming layers run in order, each with its own state slot."""

    model: nn.ModuleList

    def init_state(self, batch_size: int, fast: bool = True) -> list:
        return _init_states(self.model, batch_size, fast)

    def forward(self, x: torch.Tensor, state: list | None = None, active: torch.Tensor | None = None):
        return _run(self.model, x, state, active)


@dataclass
class SeanetConfig:
    """SEANet convolution stack of Mimi (the defaults are Kyutai's published model)."""

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    compress: int = 2
    decoder_n_filters: int = 0  # the decoder's width when it differs from the encoder's (0: n_filters)

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def decoder_filters(self) -> int:
        return self.decoder_n_filters or self.n_filters


class SeanetEncoder(_SeanetStack):
    """wav [B, 1, T] -> latent [B, dimension, T / prod(ratios)]."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        layers: list[nn.Module] = [StreamingConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size)]
        mult = 1
        for ratio in reversed(cfg.ratios):
            width = mult * cfg.n_filters
            layers += [
                ResBlock(width, cfg.residual_kernel_size, cfg.compress),
                nn.ELU(),
                StreamingConv1d(width, width * 2, ratio * 2, stride=ratio),
            ]
            mult *= 2
        layers += [nn.ELU(), StreamingConv1d(mult * cfg.n_filters, cfg.dimension, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)


class SeanetDecoder(_SeanetStack):
    """latent [B, dimension, T] -> wav [B, 1, T * prod(ratios)]."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        mult, filters = 2 ** len(cfg.ratios), cfg.decoder_filters
        layers: list[nn.Module] = [StreamingConv1d(cfg.dimension, mult * filters, cfg.kernel_size)]
        for ratio in cfg.ratios:
            width = mult * filters
            layers += [
                nn.ELU(),
                StreamingConvTranspose1d(width, width // 2, ratio * 2, stride=ratio),
                ResBlock(width // 2, cfg.residual_kernel_size, cfg.compress),
            ]
            mult //= 2
        layers += [nn.ELU(), StreamingConv1d(filters, cfg.channels, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)
