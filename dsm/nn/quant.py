"""Reduced-precision weights for streaming steps (gpt-fast style): each product reads fewer bytes.

A streaming step multiplies a few rows of activations by every weight of the model, so on CPU its cost
is the bytes of weights read, and how fast a kernel turns them into products. `WeightOnlyLinear(kind)`
stands in for `F.linear(x, weight)` with one of these kinds:

* ``fp16``: the weights in float16 (exact for bfloat16 weights in float16's normal range), products in
  float32 by FBGEMM's packed half-precision GEMM: numerically at least as good as bfloat16 products, and
  about twice as fast as PyTorch's bfloat16 GEMM for up to 8 rows on an AVX-512 CPU.
* ``int8``: weight-only int8 per output channel, bfloat16 activations (`torch._weight_int8pack_mm`).
* ``w8a8``: int8 weights per output channel and int8 activations per row, quantized on the fly (each
  row scaled to the same range, then FBGEMM's dynamic int8 GEMM, VNNI where the CPU has it): the fastest
  kind at every row count measured, and the lossiest of the int8 kinds (activation outliers cost bits).
* ``int4``: weight-only int4 in groups of 32 inputs (`torch._weight_int4pack_mm_for_cpu`).

Each weight it is called with (a whole matrix or a per-step slice of one) is converted once (`prepare`,
or on first use) and kept, keyed by its storage, offset, shape and strides, so it is meant for the frozen
weights of inference. The original weights are kept too: products with more rows than the kind's limit
(where a plain GEMM wins) and shapes a kernel does not take use them. Relative error against the
unquantized product on Gaussian weights: ~0.8 % (int8), ~1 % (w8a8), ~8 % (int4, groups of 32); through
the 2-layer stt-1b architecture see `tests/test_quant.py`.
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from dsm.errors import InputError
from dsm.nn.gemm import derived_tensors

KINDS = ("fp16", "int8", "w8a8", "int4")
FBGEMM_KINDS = ("fp16", "w8a8")
INT4_GROUP = 32
# Above this many rows a bfloat16 GEMM beats the kind's kernel (the 1B model's 822 M product weights,
# 2 threads of an AVX-512 AMD EPYC: bf16 GEMM 94 / 108 / 134 ms at 4 / 8 / 16 rows, fp16 65 / 84 / 156,
# int8 weight-only 60 ms at 4 rows; w8a8 33 / 31 / 46, and 150 ms at 64 rows against 318;
# see docs/benchmarks.md).
MAX_ROWS = 8
MAX_ROWS_BY_KIND = {"fp16": MAX_ROWS, "int8": MAX_ROWS, "w8a8": 64, "int4": MAX_ROWS}


@dataclass(frozen=True)
class _Packed:
    kind: str
    weight: Any  # int8 [N, K], int4-packed, or FBGEMM's packed parameters (fp16, w8a8)
    scales: torch.Tensor | None  # int8: [N] bf16; int4: [K / group, N, 2] bf16 (scale, zero)
    numel: int


def fbgemm_available() -> bool:
    """Whether this PyTorch build has FBGEMM's CPU kernels (x86 builds do), which `fp16` and `w8a8` use."""
    return "fbgemm" in torch.backends.quantized.supported_engines


@functools.cache
def _cpu_has_vnni() -> bool:
    """x86 int8 dot-product instructions (VNNI): without them FBGEMM's int8 products can saturate, so
    activations get 7 bits instead of 8."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


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


def pack_w8a8(weight: torch.Tensor) -> Any:
    """FBGEMM's packed int8 weight (symmetric, per output channel) for `quantized.linear_dynamic`."""
    q, scales = quantize_int8(weight)
    with warnings.catch_warnings():  # PyTorch deprecates quantized tensors; FBGEMM's packing takes them
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(
            q, scales.double(), torch.zeros_like(scales, dtype=torch.long), 0
        )
        return torch.ops.quantized.linear_prepack(qweight, None)


@functools.cache
def _span_row(width: int) -> torch.Tensor:
    """[1, width] float32 holding -1 and 1 (see `w8a8_linear`); made once per width, never written."""
    with derived_tensors():  # usable in and out of inference mode
        row = torch.zeros(1, width)
        row[0, 0], row[0, -1] = -1.0, 1.0
    return row


def w8a8_linear(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """x [M, K] float32 @ packed^T with x quantized to int8 per row. FBGEMM quantizes its whole input
    with one scale and zero point from the input's range, so each row is scaled to a largest magnitude
    of 1 (its product scaled back) and a row holding -1 and 1 is added: every row then gets the same
    grid whatever the other rows hold, so a stream's result does not depend on its batch neighbours."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
    rows = torch.cat([x / scale, _span_row(x.shape[1])])
    out = torch.ops.quantized.linear_dynamic(rows, packed, not _cpu_has_vnni())
    return out[:-1] * scale


class WeightOnlyLinear:
    """`F.linear(x, weight, bias)` with `weight` converted to `kind` (one of `KINDS`) on first use.

    CPU only (PyTorch's CPU kernels; `fp16` and `w8a8` need FBGEMM, in every x86 build). int8 / int4
    products take bfloat16 activations, fp16 / w8a8 float32 ones; the result has x's dtype. Thread-safe.
    """

    def __init__(self, kind: str, max_rows: int | None = None):
        if kind not in KINDS:
            raise InputError(f"unknown quantization {kind!r}; choose one of {', '.join(KINDS)}")
        if kind in FBGEMM_KINDS and not fbgemm_available():
            raise InputError(f"{kind} products need PyTorch's FBGEMM kernels (x86 CPUs); try int8")
        self.kind = kind
        self.max_rows = MAX_ROWS_BY_KIND[kind] if max_rows is None else max_rows
        self._packed: dict[tuple, _Packed | None] = {}
        self._lock = threading.Lock()

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        packed = self._pack(weight) if 0 < rows <= self.max_rows else None
        if packed is None:
            return F.linear(x, weight, bias)
        flat = x.reshape(rows, x.shape[-1])
        if packed.kind in FBGEMM_KINDS:
            flat = flat.float().contiguous()
            if packed.kind == "fp16":
                out = torch.ops.quantized.linear_dynamic_fp16(flat, packed.weight)
            else:
                out = w8a8_linear(flat, packed.weight)
        else:
            flat = flat.to(torch.bfloat16).contiguous()
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
        return sum(p.numel for p in self._packed.values() if p is not None)

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
        numel = weight.numel()
        if kind == "fp16":
            return _Packed(kind, torch.ops.quantized.linear_prepack_fp16(weight.float(), None), None, numel)
        if kind == "w8a8":
            return _Packed(kind, pack_w8a8(weight), None, numel)
        if kind == "int8":
            q, scales = quantize_int8(weight)
            return _Packed(kind, q, scales.to(torch.bfloat16), numel)
        q, scales_and_zeros = quantize_int4(weight)
        packed = torch._convert_weight_to_int4pack_for_cpu(q, 8)
        return _Packed(kind, packed, scales_and_zeros.to(torch.bfloat16), numel)
