"""The reference implementation (Kyutai's `moshi` package) as a test oracle.

Only tests import this module; dsm itself never imports `moshi`. Weights are random but exported in
Kyutai's published key layout and loaded through dsm's own loaders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("NO_CUDA_GRAPH", "1")

if os.environ.get("DSM_REQUIRE_ORACLE") == "1":  # the test command sets this: a missing oracle fails
    import moshi.models.loaders as moshi_loaders
else:
    moshi_loaders = pytest.importorskip(
        "moshi.models.loaders", reason="reference package moshi not installed"
    )


def kyutai_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the reference module's tensors to the names of Kyutai's published checkpoints."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"\.self_attn\.in_projs\.0\.weight$", ".self_attn.in_proj_weight", key)
        key = re.sub(r"\.self_attn\.out_projs\.0\.weight$", ".self_attn.out_proj.weight", key)
        out[key] = value.detach().clone().contiguous()
    return out


def reference_mimi(seed: int = 0, num_codebooks: int = 32):
    """The reference Mimi, full architecture, random weights with random (non-zero) codebooks."""
    torch.manual_seed(seed)
    mimi = moshi_loaders.get_mimi(None, device="cpu", num_codebooks=num_codebooks)
    return randomize_mimi(mimi, seed)


def randomize_mimi(mimi, seed: int):
    """Give a freshly built reference Mimi usable random codebooks and layer scales (in place)."""
    with torch.no_grad():
        for name, buf in mimi.named_buffers():
            if name.endswith("_codebook.embedding_sum"):
                buf.normal_(0.0, 1.0)
            elif name.endswith("_codebook.cluster_usage"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("_codebook._initialized"):
                buf.fill_(1.0)
        # Random layer scales of a realistic size (the constructor's 0.01 hides the transformer).
        for name, p in mimi.named_parameters():
            if name.endswith("layer_scale_1.scale") or name.endswith("layer_scale_2.scale"):
                p.uniform_(0.05, 0.3)
    _clear_codebook_caches(mimi)
    _fit_codebooks(mimi.eval(), seed)
    return mimi


def _clear_codebook_caches(mimi) -> None:
    for module in mimi.modules():
        if hasattr(module, "_embedding"):
            module._embedding = None
        if hasattr(module, "_cached_initialized"):
            module._cached_initialized = False


@torch.no_grad()
def _fit_codebooks(mimi, seed: int) -> None:
    """Random codebooks scaled to the residual each level sees: codes vary with the input instead of
    collapsing onto the smallest codeword, and the residual keeps its scale across the 32 levels, so
    the deep levels have no float32 near-ties (a trained Mimi has none either)."""
    gen = torch.Generator().manual_seed(seed + 1)
    wav = test_signal(2, 4 * 24000, seed=seed + 2)
    latent = mimi._encode_to_unquantized_latent(wav)
    for rvq in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
        residual = rvq.input_proj(latent).transpose(1, 2).reshape(-1, latent.shape[1] // 2)
        for layer in rvq.vq.layers:
            book = layer._codebook
            mean = residual.mean(0)
            rms = (residual - mean).pow(2).mean().sqrt()
            centroids = mean + torch.randn(book.embedding_sum.shape, generator=gen) * rms * 0.5
            book.embedding_sum.copy_(centroids * book.cluster_usage[:, None])
            book._embedding = None
            residual = residual - book.decode(book.encode(residual))
    _clear_codebook_caches(mimi)


def test_signal(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Speech-like test audio [B, 1, T]: gliding harmonics with an amplitude envelope, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 24000.0
    out = []
    for _ in range(batch):
        f0 = 100 + 150 * torch.rand(1, generator=gen)
        glide = 1 + 0.3 * torch.sin(2 * torch.pi * 0.7 * t + 6 * torch.rand(1, generator=gen))
        phase = 2 * torch.pi * torch.cumsum(f0 * glide / 24000.0, 0)
        voiced = sum(torch.sin(k * phase) / k for k in range(1, 8))
        envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3.1 * t + 6 * torch.rand(1, generator=gen)).clamp(
            min=0
        )
        noise = torch.randn(samples, generator=gen) * 0.02
        out.append(0.2 * voiced * envelope + noise)
    return torch.stack(out)[:, None].float()


def export_mimi(mimi, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(kyutai_layout(mimi.state_dict()), str(path))
    return path


def reference_lm(config: dict, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The reference LMModel for a Kyutai config dict, random weights (the reference's own init)."""
    import copy

    torch.manual_seed(seed)
    kwargs = copy.deepcopy(config)
    for key in ("model_type", "mimi_name", "tokenizer_name", "stt_config", "tts_config", "lm_gen_config"):
        kwargs.pop(key, None)
    model = moshi_loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="meta", dtype=dtype)
    model = model.to_empty(device="cpu")
    # The reference's truncated-normal init takes ~35 s for these sizes; plain scaled normals are fast.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha") or ("norm" in name and name.endswith(".weight") and p.dim() == 1):
                p.fill_(1.0).add_(torch.randn(p.shape, generator=gen).to(p.dtype), alpha=0.1)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
    return model.eval()


def export_lm(model, path: Path) -> Path:
    """Save a reference LMModel in Kyutai's published layout: fused attention projections, stacked
    along dim 0 across per-step weight sets (`in_proj_weight`, `out_proj.weight`)."""
    from safetensors.torch import save_file

    stacked: dict[str, dict[int, torch.Tensor]] = {}
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"^(.*)\.(in_projs|out_projs)\.(\d+)\.weight$", key)
        if m:
            name = (
                f"{m.group(1)}.in_proj_weight"
                if m.group(2) == "in_projs"
                else f"{m.group(1)}.out_proj.weight"
            )
            stacked.setdefault(name, {})[int(m.group(3))] = value
        else:
            out[key] = value.detach().clone().contiguous()
    for name, parts in stacked.items():
        out[name] = torch.cat([parts[i] for i in sorted(parts)], dim=0).contiguous()
    save_file(out, str(path))
    return path
