"""Mimi's split residual vector quantizer: 1 semantic codebook + N acoustic ones.

Codebooks are stored as in Kyutai's checkpoints (EMA form): `embedding_sum` [bins, dim] and
`cluster_usage` [bins]; the effective codebook is embedding_sum / max(cluster_usage, 1e-5).
Nearest-codeword search uses the matrix-multiply distance ||x||^2 + ||c||^2 - 2 x.c computed as one
GEMM over augmented vectors, exactly as torch.cdist does, so near-ties resolve like the reference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dsm.nn.gemm import derived_tensors, skinny_linear

_EPSILON = 1e-5


class Codebook(nn.Module):
    def __init__(self, bins: int, dim: int):
        super().__init__()
        self.register_buffer("embedding_sum", torch.zeros(bins, dim))
        self.register_buffer("cluster_usage", torch.ones(bins))
        self.register_buffer("_initialized", torch.tensor([1.0]))
        self._clear()

    def _clear(self) -> None:
        self._embedding: torch.Tensor | None = None
        self._augmented: torch.Tensor | None = None
        self._augmented_t: torch.Tensor | None = None

    def _load_from_state_dict(self, *args, **kwargs):  # new weights invalidate the derived tables
        self._clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):  # .to(device/dtype) invalidates them too
        self._clear()
        return super()._apply(fn, recurse)

    @property
    def embedding(self) -> torch.Tensor:
        if self._embedding is None:
            with derived_tensors():
                self._embedding = self.embedding_sum / self.cluster_usage.clamp(min=_EPSILON)[:, None]
        return self._embedding

    @property
    def augmented(self) -> torch.Tensor:
        """[bins, dim + 2] rows (c, 1, ||c||^2), the right operand of the distance GEMM."""
        if self._augmented is None:
            emb = self.embedding
            with derived_tensors():
                norm = emb.pow(2).sum(-1, keepdim=True)
                self._augmented = torch.cat([emb, torch.ones_like(norm), norm], dim=-1)
        return self._augmented

    @property
    def augmented_t(self) -> torch.Tensor:
        """The augmented table transposed to a contiguous [dim + 2, bins]."""
        if self._augmented_t is None:
            table = self.augmented
            with derived_tensors():
                self._augmented_t = table.t().contiguous()
        return self._augmented_t

    def encode(self, x: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """Nearest codeword index for each row of x [N, dim].

        `exact` runs the distance GEMM in the same form as torch.cdist (bit-identical to the
        reference); otherwise a faster form for few rows, equal up to float rounding.
        """
        norm = x.pow(2).sum(-1, keepdim=True)
        left = torch.cat([x.mul(-2), norm, torch.ones_like(norm)], dim=-1)
        if exact:
            dist = left[None].matmul(self.augmented[None].mT)[0]
        elif left.shape[0] <= 2:  # one or two vectors: a row-major [dim + 2, bins] table streams fastest
            dist = left @ self.augmented_t
        else:
            dist = skinny_linear(left, self.augmented)
        return dist.clamp_min_(0).sqrt_().argmin(dim=-1)


class _VectorQuantization(nn.Module):
    def __init__(self, bins: int, dim: int):
        super().__init__()
        self._codebook = Codebook(bins, dim)


class _Levels(nn.Module):
    def __init__(self, n_q: int, bins: int, dim: int):
        super().__init__()
        self.layers = nn.ModuleList(_VectorQuantization(bins, dim) for _ in range(n_q))


class ResidualVQ(nn.Module):
    """Residual VQ with its own 1x1 input/output projections (keys `input_proj`, `output_proj`, `vq`)."""

    def __init__(self, n_q: int, dimension: int, input_dimension: int, output_dimension: int, bins: int):
        super().__init__()
        self.input_proj = nn.Conv1d(input_dimension, dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(dimension, output_dimension, 1, bias=False)
        self.vq = _Levels(n_q, bins, dimension)

    @property
    def max_n_q(self) -> int:
        return len(self.vq.layers)

    def encode(self, x: torch.Tensor, n_q: int, exact: bool = True) -> torch.Tensor:
        """latent [B, C, T] -> codes [B, n_q, T]."""
        residual = self.input_proj(x)
        B, _, T = residual.shape
        codes = []
        for level in self.vq.layers[:n_q]:
            book = level._codebook
            idx = book.encode(residual.transpose(1, 2).reshape(B * T, -1), exact).view(B, T)
            residual = residual - F.embedding(idx, book.embedding).transpose(1, 2)
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def sum_codewords(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] (K <= max_n_q) -> the sum of their codewords [B, dimension, T] (before the
        output projection)."""
        quantized = None
        for k in range(codes.shape[1]):
            vec = F.embedding(codes[:, k], self.vq.layers[k]._codebook.embedding).transpose(1, 2)
            quantized = vec if quantized is None else quantized + vec
        return quantized

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] (K <= max_n_q) -> latent [B, C_out, T], summing codewords before projecting."""
        return self.output_proj(self.sum_codewords(codes))

    def code_vectors(self) -> torch.Tensor:
        """[levels, bins, C_out]: each level's codewords through the output projection (what one code adds
        to the decoded latent; the projection is linear, so `decode` is the sum of these rows)."""
        weight = self.output_proj.weight[:, :, 0]
        return torch.stack([level._codebook.embedding @ weight.T for level in self.vq.layers])


class SplitResidualVQ(nn.Module):
    """rvq_first (semantic, 1 level) and rvq_rest (acoustic), both fed the same latent."""

    def __init__(
        self,
        n_q: int = 32,
        n_q_semantic: int = 1,
        dimension: int = 256,
        input_dimension: int = 512,
        output_dimension: int = 512,
        bins: int = 2048,
    ):
        super().__init__()
        self.n_q_semantic = n_q_semantic
        self.bins = bins
        self.rvq_first = ResidualVQ(n_q_semantic, dimension, input_dimension, output_dimension, bins)
        self.rvq_rest = ResidualVQ(n_q - n_q_semantic, dimension, input_dimension, output_dimension, bins)

    @property
    def max_n_q(self) -> int:
        return self.n_q_semantic + self.rvq_rest.max_n_q

    def _apply(self, fn, recurse=True):
        """Follow device moves but never dtype casts: codebook search needs float32."""

        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            return t.to(out.device) if out.dtype != t.dtype else out

        return super()._apply(keep_dtype, recurse)

    def encode(self, x: torch.Tensor, n_q: int, exact: bool = True) -> torch.Tensor:
        """latent [B, C, T] -> codes [B, n_q, T]; `exact` as in `Codebook.encode`."""
        codes = self.rvq_first.encode(x, self.n_q_semantic, exact)
        if n_q > self.n_q_semantic:
            codes = torch.cat([codes, self.rvq_rest.encode(x, n_q - self.n_q_semantic, exact)], dim=1)
        return codes

    def code_vectors(self) -> torch.Tensor:
        """[n_q, bins, output_dimension]: code k of codebook q adds ``code_vectors()[q, k]`` to the latent
        that `decode` returns (codebook 0 the semantic one)."""
        return torch.cat([self.rvq_first.code_vectors(), self.rvq_rest.code_vectors()])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        quantized = self.rvq_first.decode(codes[:, : self.n_q_semantic])
        if codes.shape[1] > self.n_q_semantic:
            quantized = quantized + self.rvq_rest.decode(codes[:, self.n_q_semantic :])
        return quantized
