"""Weight-only quantization for streaming steps (gpt-fast style): int8 per output channel, int4 per group.

A streaming step multiplies a few rows of activations by every weight of the model, so on CPU its cost
is the bytes of weights read. Storing them in int8 halves those bytes against bfloat16 (int4 quarters
them); the products run in PyTorch's weight-only kernels (`torch._weight_int8pack_mm`,
`torch._weight_int4pack_mm_for_cpu`), which dequantize on the fly with bfloat16 activations.

`WeightOnlyLinear(kind)` stands in for `F.linear(x, weight)`: each weight it is called with (a whole
matrix or a per-step slice of one) is quantized once (`prepare`, or on first use) and kept, keyed by its
storage, offset, shape and strides, so it is meant for the frozen weights of inference. The original
weights are kept too: products with many rows (where the quantized kernels lose to a plain GEMM) and
shapes a kernel does not take use them. Results differ from the unquantized model by the rounding of the
weights: on Gaussian weights a product is off by ~0.8 % (int8) or ~8 % (int4, groups of 32), relative;
through the 2-layer stt-1b architecture, 1.5 % and 13.5 % (`tests/test_quant.py`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from dsm.errors import InputError
from dsm.nn.gemm import derived_tensors

KINDS = ("int8", "int4")
INT4_GROUP = 32
# Above this many rows a bfloat16 GEMM beats the weight-only kernels on an AVX2 CPU (int8: 20 vs 27 ms
# at 4 rows, 72 vs 42 ms at 16, for 277 M weights; see docs/benchmarks.md).
MAX_ROWS = 8


@dataclass(frozen=True)
class _Packed:
    kind: str
    weight: torch.Tensor  # int8 [N, K] or int4-packed
    scales: torch.Tensor  # int8: [N] bf16; int4: [K / group, N, 2] bf16 (scale, zero)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: returns (q [N, K] int8, scales [N] float32), w ~ q * scale."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of `group` inputs: (q [N, K] int32 in 0..15, scales_and_zeros
    [K / group, N, 2] float32), w ~ (q - 8) * scale + zero, the layout of PyTorch's int4 kernels."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group, group)
    low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    scales = ((high - low) / 15).clamp(min=1e-12)
    q = torch.round((w - low) / scales).clamp(0, 15).to(torch.int32).reshape(n, k)
    zeros = low + 8 * scales
    scales_and_zeros = torch.stack([scales.reshape(n, -1), zeros.reshape(n, -1)], dim=-1).transpose(0, 1)
    return q, scales_and_zeros.contiguous()


def dequantize(q: torch.Tensor, scales: torch.Tensor, kind: str, group: int = INT4_GROUP) -> torch.Tensor:
    """The float32 weight that `quantize_int8` / `quantize_int4` output stands for (for tests and
    error estimates; `q` as the quantizer returns it: int8 [N, K] or int32 [N, K])."""
    if kind == "int8":
        return q.float() * scales[:, None].float()
    n, k = q.shape
    sz = scales.float().transpose(0, 1)  # [N, K / group, 2]
    groups = q.float().reshape(n, k // group, group)
    return ((groups - 8) * sz[..., :1] + sz[..., 1:]).reshape(n, k)


def _supports(kind: str, weight: torch.Tensor) -> bool:
    if weight.dim() != 2 or weight.device.type != "cpu" or not weight.is_floating_point():
        return False
    n, k = weight.shape
    if kind == "int4":
        return n % 16 == 0 and k % INT4_GROUP == 0
    return True


class WeightOnlyLinear:
    """`F.linear(x, weight, bias)` with `weight` quantized to `kind` ("int8" or "int4") on first use.

    CPU only (the kernels are PyTorch's CPU weight-only kernels); activations are cast to bfloat16 for
    the product and the result back to x's dtype. Thread-safe.
    """

    def __init__(self, kind: str, max_rows: int = MAX_ROWS):
        if kind not in KINDS:
            raise InputError(f"unknown quantization {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.max_rows = max_rows
        self._packed: dict[tuple, _Packed | None] = {}
        self._lock = threading.Lock()

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        packed = self._pack(weight) if 0 < rows <= self.max_rows else None
        if packed is None:
            return F.linear(x, weight, bias)
        flat = x.reshape(rows, x.shape[-1]).to(torch.bfloat16).contiguous()
        if packed.kind == "int8":
            out = torch._weight_int8pack_mm(flat, packed.weight, packed.scales)
        else:
            out = torch._weight_int4pack_mm_for_cpu(flat, packed.weight, INT4_GROUP, packed.scales)
        out = out.to(x.dtype)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], weight.shape[0])

    def prepare(self, weights: list[torch.Tensor]) -> None:
        """Quantize these weights now (a weight first seen in a product is quantized then)."""
        for weight in weights:
            self._pack(weight)

    @property
    def quantized_parameters(self) -> int:
        """Number of weights held in quantized form so far."""
        return sum(_numel(p) for p in self._packed.values() if p is not None)

    def _pack(self, weight: torch.Tensor) -> _Packed | None:
        storage = weight.untyped_storage().data_ptr()
        key = (storage, weight.storage_offset(), tuple(weight.shape), weight.stride())
        packed = self._packed.get(key, False)
        if packed is not False:
            return packed
        with self._lock, derived_tensors():
            if key not in self._packed:
                self._packed[key] = self._quantize(weight)
            return self._packed[key]

    def _quantize(self, weight: torch.Tensor) -> _Packed | None:
        kind = self.kind if _supports(self.kind, weight) else "int8"
        if not _supports(kind, weight):
            return None
        if kind == "int8":
            q, scales = quantize_int8(weight)
            return _Packed(kind, q, scales.to(torch.bfloat16))
        q, scales_and_zeros = quantize_int4(weight)
        packed = torch._convert_weight_to_int4pack_for_cpu(q, 8)
        return _Packed(kind, packed, scales_and_zeros.to(torch.bfloat16))


def _numel(p: _Packed) -> int:
    if p.kind == "int8":
        return p.weight.numel()
    return p.weight.numel() * 2  # two 4-bit weights per byte
