"""Causal 1-d convolutions that run one-shot or streaming with identical results.

Each streaming module keeps a per-stream state (a small dataclass of tensors with batch first), so a
batch of B independent streams can be stepped together, and any subset reset without touching the
others. One-shot calls start from a fresh state, exactly like the first streaming call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dsm.nn.gemm import derived_tensors, skinny_linear

# Streaming chunks up to this many output steps take the GEMM paths below.
_GEMM_MAX_STEPS = 64


def _where_rows(mask: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> None:
    """Write `new` into `old` in place, only for batch rows where `mask` is true (all rows if None)."""
    if mask is None:
        old.copy_(new)
    else:
        old.copy_(torch.where(mask.view(-1, *([1] * (old.dim() - 1))), new, old))


@dataclass
class ConvState:
    """Left context of a causal conv: the last `kernel - stride` input frames of each stream."""

    previous: torch.Tensor  # [B, C_in, kernel - stride]
    first: torch.Tensor  # [B] bool, true until the stream's first chunk (replicate padding)
    fast: bool = True  # GEMM path for short chunks; False reproduces the reference's kernels exactly

    def reset(self, mask: torch.Tensor) -> None:
        self.previous.masked_fill_(mask.view(-1, 1, 1), 0.0)
        self.first.masked_fill_(mask, True)


class StreamingConv1d(nn.Module):
    """Causal Conv1d: left-pads with the stream's previous input (zeros, or the first sample replicated).

    Keys follow Kyutai's layout: the torch conv lives at `conv.conv` (the checkpoint adds `.conv.conv`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ):
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"unknown pad_mode {pad_mode!r}")
        self.conv = nn.Module()
        self.conv.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride, dilation=dilation, groups=groups, bias=bias
        )
        self.stride = stride
        self.pad_mode = pad_mode
        self.context = (kernel_size - 1) * dilation + 1 - stride

    def _conv(self, x: torch.Tensor, steps: int, fast: bool) -> torch.Tensor:
        """The convolution proper. Short streaming chunks run as one GEMM over unfolded windows, which
        avoids the per-call weight re-layout of the library conv (the results agree to float rounding)."""
        conv = self.conv.conv
        if not fast or steps > _GEMM_MAX_STEPS or conv.groups != 1 or conv.dilation[0] != 1:
            return conv(x)
        c_out, c_in, k = conv.weight.shape
        windows = x.unfold(-1, k, self.stride).transpose(1, 2).reshape(x.shape[0], steps, c_in * k)
        return skinny_linear(windows, conv.weight.view(c_out, c_in * k), conv.bias).transpose(1, 2)

    def init_state(self, batch_size: int, fast: bool = True) -> ConvState:
        weight = self.conv.conv.weight
        previous = torch.zeros(
            batch_size, self.conv.conv.in_channels, self.context, dtype=weight.dtype, device=weight.device
        )
        first = torch.ones(batch_size, dtype=torch.bool, device=weight.device)
        return ConvState(previous, first, fast)

    def forward(
        self, x: torch.Tensor, state: ConvState | None = None, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Convolve `x` [B, C, T] (T a positive multiple of the stride) after the stream's left context.

        `active` ([B] bool) limits state updates to those streams; None updates all.
        """
        T = x.shape[-1]
        if T == 0 or T % self.stride:
            raise ValueError(f"input length {T} must be a positive multiple of the stride {self.stride}")
        if self.context == 0:
            return self.conv.conv(x)
        if state is None:
            state = self.init_state(x.shape[0], fast=False)
        if self.pad_mode == "replicate":
            # a copy: the flag is updated in place below, and autograd may hold this mask
            first = state.first.clone() if active is None else state.first & active
            state.previous.copy_(torch.where(first.view(-1, 1, 1), x[..., :1], state.previous))
        x = torch.cat([state.previous, x], dim=-1)
        y = self._conv(x, T // self.stride, state.fast)
        _where_rows(active, x[..., -self.context :], state.previous)
        if self.pad_mode == "replicate":
            if active is None:
                state.first.fill_(False)
            else:
                state.first.masked_fill_(active, False)
        return y


@dataclass
class ConvTrState:
    """Overlap of a transposed conv: the last `kernel - stride` output samples, bias removed."""

    partial: torch.Tensor  # [B, C_out, kernel - stride]
    fast: bool = True  # GEMM overlap-add for short chunks; False reproduces the reference's kernels

    def reset(self, mask: torch.Tensor) -> None:
        self.partial.masked_fill_(mask.view(-1, 1, 1), 0.0)


class StreamingConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d: emits T*stride samples per call, carrying the overlap to the next call.

    The torch module lives at `convtr.convtr` to match Kyutai's checkpoint keys.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.convtr = nn.Module()
        self.convtr.convtr = nn.ConvTranspose1d(
            in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias
        )
        self.stride = stride
        self.overlap = kernel_size - stride
        self._gemm_cache: tuple | None = None

    def init_state(self, batch_size: int, fast: bool = True) -> ConvTrState:
        weight = self.convtr.convtr.weight
        partial = torch.zeros(
            batch_size,
            self.convtr.convtr.out_channels,
            self.overlap,
            dtype=weight.dtype,
            device=weight.device,
        )
        return ConvTrState(partial, fast)

    def forward(
        self, x: torch.Tensor, state: ConvTrState | None = None, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        P = self.overlap
        if state is not None and state.fast and x.shape[-1] <= _GEMM_MAX_STEPS and P == self.stride:
            return self._overlap_add(x, state, active)
        y = self.convtr.convtr(x)
        if P == 0:
            return y
        if state is None:
            return y[..., :-P]
        y[..., :P] += state.partial
        tail = y[..., -P:]
        bias = self.convtr.convtr.bias
        if bias is not None:
            tail = tail - bias[:, None]
        _where_rows(active, tail, state.partial)
        return y[..., :-P]

    def _gemm_weight(self) -> torch.Tensor:
        """The weight as a contiguous [c_out * kernel, c_in] matrix, cached until the weight changes."""
        weight = self.convtr.convtr.weight
        version = 0 if weight.is_inference() else weight._version  # inference tensors are immutable
        key = (weight.data_ptr(), version, weight.dtype, weight.device)
        if self._gemm_cache is None or self._gemm_cache[0] != key:
            with derived_tensors():
                self._gemm_cache = (key, weight.detach().reshape(weight.shape[0], -1).t().contiguous())
        return self._gemm_cache[1]

    def _overlap_add(self, x: torch.Tensor, state: ConvTrState, active: torch.Tensor | None) -> torch.Tensor:
        """Streaming path for kernel == 2 * stride: each input step yields 2 * stride samples as one
        GEMM; the first half overlaps the previous step's second half (carried in `state.partial`)."""
        convtr = self.convtr.convtr
        B, c_in, T = x.shape
        S = self.stride
        weight = convtr.weight  # [c_in, c_out / groups, 2S]
        if convtr.groups == 1:
            c_out = weight.shape[1]
            z = skinny_linear(x.transpose(1, 2), self._gemm_weight()).view(B, T, c_out, 2 * S)
        elif convtr.groups == c_in and weight.shape[1] == 1:
            c_out = c_in
            z = x.transpose(1, 2)[..., None] * weight[:, 0]
        else:
            raise NotImplementedError("grouped transposed conv other than depthwise")
        heads, tails = z[..., :S], z[..., S:]
        carried = torch.cat([state.partial[:, None], tails[:, :-1]], dim=1)
        y = (heads + carried).permute(0, 2, 1, 3).reshape(B, c_out, T * S)
        if convtr.bias is not None:
            y = y + convtr.bias[:, None]
        _where_rows(active, tails[:, -1], state.partial)
        return y
