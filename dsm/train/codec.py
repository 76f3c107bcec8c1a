"""Training a Mimi-architecture codec (any width: `[codec.arch]` holds MimiConfig fields).

Forward: SEANet encoder -> transformer -> downsample -> split residual VQ -> upsample -> transformer ->
SEANet decoder, on random ``segment_seconds`` crops of the manifest's audio. The quantizer keeps Kyutai's
EMA codebooks (``embedding_sum`` / ``cluster_usage``): each level picks the nearest codeword of the
residual, the codebooks follow the batch statistics (all-reduced across ranks), unused codewords are
re-seeded from the batch, and gradients pass the quantizer straight through, with a commitment loss
pulling the encoder towards its codewords. With ``quantizer_dropout`` each batch uses a random number of
codebooks (1..n_q) so that every prefix of codebooks decodes.

Losses: multi-scale mel (L1 on mel and log-mel magnitudes at each STFT size of ``mel_scales``), waveform
L1, commitment; with ``adversarial_weight`` > 0 also a multi-scale STFT discriminator (hinge loss) and
feature matching; with ``decoder_only`` the encoder and the init's codebooks stay as they are (so do its
codes) while the decoder side trains, and codebooks the init lacks (an architecture with more) are learned
after them; with ``code_noise`` too the decoder side learns from codes with near misses (each replaced,
with that probability, by one of its nearest codewords); with ``substitute_codes`` it learns to decode
what a TTS model draws (a share of batches decoded from the model's teacher-forced codes, aligned with
the true audio, as vocoders are fine-tuned on predicted features); with ``distill_weight`` > 0 the
semantic distillation of the first codebook, as Mimi does from WavLM: a linear head maps the first
codebook's quantized output of each frame to a teacher's features of that frame (`dsm.train.teacher`,
Whisper's encoder), loss 1 - cosine similarity. With teacher features or drawn codes, crops start on
frame boundaries. The export writes
``mimi.safetensors`` in Kyutai's layout (`dsm.codec.load_mimi` reads it) and ``mimi_config.json`` (the
architecture, for `MimiConfig.from_dict`); the distillation head is training-only and not exported.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from dsm.audio import read_audio
from dsm.codec import Mimi, MimiConfig, save_mimi
from dsm.codec.loader import CONFIG_NAME, WEIGHTS_NAME, check_state_dict, normalize_keys, read_safetensors
from dsm.codec.quantizer import ResidualVQ
from dsm.errors import CheckpointError, InputError
from dsm.train.config import TrainConfig
from dsm.train.data.manifest import manifest_root, read_manifest
from dsm.train.dataset import BatchOrder, select
from dsm.train.loop import DistInfo, TrainTask

log = logging.getLogger("dsm.train")

_DEAD_USAGE = 1e-2  # EMA usage under which a codeword is re-seeded from the batch


# -- mel loss ---------------------------------------------------------------------------------------------


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-mel filters [n_mels, n_fft // 2 + 1] between 0 Hz and Nyquist."""

    def to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(to_mel(0.0), to_mel(sample_rate / 2), n_mels + 2))
    fb = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        rising = (freqs - lo) / max(mid - lo, 1e-9)
        falling = (hi - freqs) / max(hi - mid, 1e-9)
        fb[i] = np.maximum(0.0, np.minimum(rising, falling))
    return torch.from_numpy(fb).float()


class MultiScaleMelLoss(nn.Module):
    """Mean over STFT sizes of L1(mel) + L1(log mel) between two waveforms [B, 1, T].

    The log takes ``log(mel + floor)``. With ``floor_db`` None the floor is 1e-5 for every bin; with a
    level in dBFS it is, per mel bin and STFT size, the magnitude white noise of that level would have,
    so that differences under that noise floor (the exact digital silence of synthetic speech against a
    faint hiss) cost nothing instead of dominating the loss."""

    def __init__(self, sample_rate: int, scales: list[int], n_mels: int, floor_db: float | None = None):
        super().__init__()
        self.scales = list(scales)
        for n_fft in self.scales:
            mels = min(n_mels, n_fft // 4)
            fb = mel_filterbank(n_fft, mels, sample_rate)
            window = torch.hann_window(n_fft)
            if floor_db is None:
                floor = torch.full((mels, 1), 1e-5)
            else:  # white noise of std s has an expected STFT magnitude of ~s * ||window|| per bin
                floor = 10 ** (floor_db / 20) * window.norm() * fb.sum(1, keepdim=True)
                floor = floor.clamp(min=1e-5)  # (mel bins narrower than one STFT bin are empty)
            self.register_buffer(f"fb_{n_fft}", fb, persistent=False)
            self.register_buffer(f"win_{n_fft}", window, persistent=False)
            self.register_buffer(f"floor_{n_fft}", floor, persistent=False)

    def mel(self, wav: torch.Tensor, n_fft: int) -> torch.Tensor:
        spec = torch.stft(
            wav.float().flatten(0, 1),
            n_fft,
            hop_length=n_fft // 4,
            window=getattr(self, f"win_{n_fft}"),
            center=True,
            return_complex=True,
        )
        return getattr(self, f"fb_{n_fft}") @ spec.abs()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros((), dtype=torch.float32)
        for n_fft in self.scales:
            a, b = self.mel(pred, n_fft), self.mel(target, n_fft)
            floor = getattr(self, f"floor_{n_fft}")
            total = total + F.l1_loss(a, b) + F.l1_loss(torch.log(a + floor), torch.log(b + floor))
        return total / len(self.scales)


# -- discriminator ----------------------------------------------------------------------------------------


class StftDiscriminator(nn.Module):
    """One scale: 2-d convolutions over the (real, imaginary) STFT; returns logits and feature maps."""

    def __init__(self, n_fft: int, channels: int = 16):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(2, channels, (3, 9), padding=(1, 4)),
                nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4)),
                nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4)),
                nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)),
            ]
        )
        self.out = nn.Conv2d(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(
            wav.float().flatten(0, 1),
            self.n_fft,
            hop_length=self.n_fft // 4,
            window=self.window,
            return_complex=True,
        )
        x = torch.stack([spec.real, spec.imag], 1).transpose(2, 3)  # [B, 2, time, freq]
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        return self.out(x), feats


class MultiScaleStftDiscriminator(nn.Module):
    """One `StftDiscriminator` per STFT size; always runs in float32 (bf16 2-d convolutions are slow on
    CPUs and gain little here)."""

    def __init__(self, scales: list[int], channels: int = 32):
        super().__init__()
        self.discs = nn.ModuleList(StftDiscriminator(n, channels) for n in scales)

    def forward(self, wav: torch.Tensor):
        with torch.autocast(wav.device.type, enabled=False):
            return [d(wav.float()) for d in self.discs]


# -- quantizer training -----------------------------------------------------------------------------------


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, 0)
    return t


def train_rvq(
    rvq: ResidualVQ, latent: torch.Tensor, n_q: int, decay: float, update: bool, frozen: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``latent`` [B, C, F] with the first ``n_q`` levels of ``rvq`` for training.

    Returns (output [B, C_out, F] with straight-through gradients, commitment loss). With ``update`` the
    EMA codebooks but the first ``frozen`` follow this batch (and dead codewords are re-seeded from it)."""
    x = rvq.input_proj(latent).float()
    B, D, T = x.shape
    residual = x
    quantized = torch.zeros_like(x)
    commit = x.new_zeros(())
    for index, level in enumerate(rvq.vq.layers[:n_q]):
        book = level._codebook
        learn = update and index >= frozen
        flat = residual.detach().transpose(1, 2).reshape(B * T, D)
        if learn and float(book._initialized) == 0:
            with torch.no_grad():
                pick = torch.randint(flat.shape[0], (book.embedding_sum.shape[0],), device=flat.device)
                book.embedding_sum.copy_(_broadcast(flat[pick].clone()))
                book.cluster_usage.fill_(1.0)
                book._initialized.fill_(1.0)
                book._clear()
        embedding = book.embedding_sum / book.cluster_usage.clamp(min=1e-5)[:, None]
        with torch.no_grad():
            dist_ = torch.cdist(flat[None], embedding[None])[0]
            idx = dist_.argmin(-1)
        q = F.embedding(idx, embedding).view(B, T, D).transpose(1, 2)
        commit = commit + F.mse_loss(residual, q.detach())
        if learn:
            with torch.no_grad():
                onehot = F.one_hot(idx, embedding.shape[0]).float()
                counts = _all_reduce(onehot.sum(0))
                sums = _all_reduce(onehot.t() @ flat)
                book.cluster_usage.mul_(decay).add_(counts, alpha=1 - decay)
                book.embedding_sum.mul_(decay).add_(sums, alpha=1 - decay)
                dead = book.cluster_usage < _DEAD_USAGE
                if bool(dead.any()):
                    pick = torch.randint(flat.shape[0], (int(dead.sum()),), device=flat.device)
                    book.embedding_sum[dead] = _broadcast(flat[pick].clone())
                    book.cluster_usage[dead] = 1.0
                book._clear()
        quantized = quantized + q
        residual = residual - q.detach()
    out = x + (quantized - x).detach()
    return rvq.output_proj(out.to(latent.dtype)), commit


_REST_LEVEL = re.compile(r"quantizer\.rvq_rest\.vq\.layers\.(\d+)\.")


def load_init_codec(path: Path, arch: MimiConfig, device: str | torch.device) -> tuple[Mimi, int]:
    """The codec a run starts from (a weights file or export directory) and how many codebooks it has.

    An init with fewer codebooks than ``arch`` (e.g. 8 of 16) fills the first ones; the others start
    unseeded (from the first training batch). An init whose SEANet decoder is narrower by an integer factor
    (``seanet.decoder_n_filters``) is widened (`widen_decoder`). Any other mismatch is a `CheckpointError`."""
    file = path / WEIGHTS_NAME if path.is_dir() else path
    state = normalize_keys(read_safetensors(file))
    levels = len({int(m.group(1)) for key in state if (m := _REST_LEVEL.match(key))})
    with torch.device(device):
        mimi = Mimi(arch)
    fresh = mimi.state_dict()  # the levels past the init's (none when it has them all)
    new = {k: v for k, v in fresh.items() if (m := _REST_LEVEL.match(k)) and int(m.group(1)) >= levels}
    state = {k: v.to(device=device, dtype=torch.float32) for k, v in state.items()} | new
    first = "decoder.model.0.conv.conv.weight"
    if first in state and state[first].shape[0] < fresh[first].shape[0]:
        factor, rest = divmod(fresh[first].shape[0], state[first].shape[0])
        if rest:
            raise CheckpointError(
                f"{file}: its decoder cannot be widened to {arch.seanet.decoder_filters} filters"
            )
        state = widen_decoder(state, factor)
    check_state_dict(mimi, state, str(file))
    mimi.load_state_dict(state)
    for level in mimi.quantizer.rvq_rest.vq.layers[levels:]:
        level._codebook._initialized.fill_(0.0)
    return mimi, arch.n_q_semantic + levels


def widen_decoder(
    state: dict[str, torch.Tensor], factor: int, noise: float = 1e-3
) -> dict[str, torch.Tensor]:
    """A Mimi state with its SEANet decoder ``factor`` times wider, computing the same function (Net2Net):
    every channel of the decoder is repeated ``factor`` times and the weights reading repeated channels
    are divided by ``factor``; each repeat is then scaled by 1 + ``noise`` x N(0, 1) so that the copies
    can learn apart. Every other entry is kept."""
    gen = torch.Generator().manual_seed(0)
    out = dict(state)
    keys = sorted(k for k in state if k.startswith("decoder.model."))
    last = max(int(k.split(".")[2]) for k in keys)
    for key in keys:
        value = state[key]
        index = int(key.split(".")[2])
        transposed = ".convtr." in key
        widen_in = index > 0 and key.endswith("weight")  # the first conv reads the latent
        widen_out = index < last  # the last conv writes the waveform
        in_dim, out_dim = (0, 1) if transposed and value.dim() > 1 else (1, 0)
        if widen_out:
            value = value.repeat_interleave(factor, dim=out_dim)
        if widen_in:
            value = value.repeat_interleave(factor, dim=in_dim) / factor
        if widen_out or widen_in:
            value = value * (1 + noise * torch.randn(value.shape, generator=gen)).to(value)
        out[key] = value
    return out


class CodecTrainModule(nn.Module):
    """forward(wav [B, 1, T]) -> (loss, metrics) of the codec autoencoder (see the module docstring)."""

    def __init__(
        self,
        mimi: Mimi,
        cfg: TrainConfig,
        discriminator: nn.Module | None,
        teacher_dim: int | None = None,
        frozen_codebooks: int = 0,
        soft_levels: int = 0,
    ):
        super().__init__()
        self.mimi = mimi
        c = cfg.codec
        self.c = c
        self.frozen = frozen_codebooks  # the first codebooks (semantic one first), never updated
        self.soft_levels = soft_levels  # codebooks that expected codewords stand for (soft substitutes)
        self.mel_loss = MultiScaleMelLoss(mimi.sample_rate, c.mel_scales, c.mel_bins, c.mel_floor_db)
        self._disc = [discriminator]  # not a submodule: it has its own optimizer and checkpoint entry
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        # training-only head (not exported): first codebook's output -> teacher features
        self.distill = nn.Linear(mimi.cfg.dimension, teacher_dim) if teacher_dim else None
        self.neighbours: torch.Tensor | None = None  # [n_q, bins, k] for code_noise (frozen codebooks)
        if c.code_noise > 0:
            with torch.no_grad():
                vectors = mimi.quantizer.code_vectors().float()
                dist_ = torch.cdist(vectors, vectors)
                dist_.diagonal(dim1=1, dim2=2).fill_(float("inf"))  # never the code itself
                self.neighbours = dist_.argsort(-1)[..., : c.code_noise_neighbours].contiguous()

    def perturb(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, F] with each replaced, with probability ``code_noise``, by one of its
        ``code_noise_neighbours`` nearest codewords (uniformly)."""
        assert self.neighbours is not None
        table = self.neighbours[: codes.shape[1]]
        level = torch.arange(codes.shape[1], device=codes.device)[None, :, None].expand_as(codes)
        pick = torch.randint(table.shape[-1], codes.shape, device=codes.device)
        swap = torch.rand(codes.shape, device=codes.device) < self.c.code_noise
        return torch.where(swap, table[level, codes, pick], codes)

    def distill_loss(self, first: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """1 - cosine similarity between the head's map of `first` [B, C, F] and `teacher` [B, F, D],
        over the frames the teacher covers (all-zero rows are padding past an utterance's end)."""
        pred = self.distill(first.transpose(1, 2).float())
        n = min(pred.shape[1], teacher.shape[1])
        pred, teacher = pred[:, :n], teacher[:, :n].float()
        covered = teacher.abs().sum(-1) > 0
        if not bool(covered.any()):
            return pred.sum() * 0.0
        return (1 - F.cosine_similarity(pred, teacher, dim=-1))[covered].mean()

    def reconstruct(
        self, wav: torch.Tensor, n_q: int, update: bool, substitute: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(decoded audio, commitment loss, first codebook's quantized output [B, C, frames]). With
        ``substitute`` (decoder_only): codes [B, n_q, frames], those but -1 replace the true ones; or expected
        acoustic codewords [B, codebook_dim, frames] (floats), those but NaN replace the sum of the true
        acoustic codewords of the first n_q codebooks."""
        m = self.mimi
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.c.decoder_only):
            latent = m.downsample(m.encoder_transformer(m.encoder(wav)))
        quant = m.quantizer
        noise = self.neighbours is not None and self.training
        if noise or substitute is not None:  # decoder_only: the codebooks are frozen
            with torch.no_grad():
                codes = quant.encode(latent.float(), n_q)
                if noise:
                    codes = self.perturb(codes)
                soft = substitute is not None and substitute.is_floating_point()
                if substitute is not None:
                    frames = codes.shape[-1]
                    pad = (0, frames - substitute.shape[-1])
                    sub = F.pad(substitute[..., :frames], pad, value=float("nan") if soft else -1)
                    if soft:
                        rest = quant.rvq_rest.sum_codewords(codes[:, quant.n_q_semantic :])
                        rest = torch.where(sub.isnan(), rest, sub.to(rest.dtype))
                    else:
                        codes = torch.where(sub >= 0, sub, codes)
            first = quant.rvq_first.decode(codes[:, : quant.n_q_semantic])
            if soft:
                out = first + quant.rvq_rest.output_proj(rest)
            else:
                out = quant.decode(codes)
            commit = latent.new_zeros(())
        else:
            n_sem, decay = quant.n_q_semantic, self.c.ema_decay
            first, commit = train_rvq(quant.rvq_first, latent, n_sem, decay, update, self.frozen)
            out = first
            if n_q > n_sem:
                rest, commit_rest = train_rvq(
                    quant.rvq_rest, latent, n_q - n_sem, decay, update, max(0, self.frozen - n_sem)
                )
                out = out + rest
                commit = commit + commit_rest
        return m.decode_from_latent(out), commit, first

    def forward(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]):
        """`batch`: audio [B, 1, T], or (audio, teacher features [B, frames, D] or None, substitutes or
        None): distillation targets, and the codes [B, K, frames] to decode from instead of the true first
        K or the expected acoustic codewords [B, codebook_dim, frames] (`reconstruct`;
        `CodecTask.next_batch`)."""
        wav, teacher, substitute = batch if isinstance(batch, tuple) else (batch, None, None)
        n_total = self.mimi.total_codebooks
        n_q = n_total
        if substitute is not None:
            n_q = self.soft_levels if substitute.is_floating_point() else substitute.shape[1]
        elif self.training and self.c.quantizer_dropout:
            n_q = int(torch.randint(1, n_total + 1, ()))
        y, commit, first = self.reconstruct(wav, n_q, update=self.training, substitute=substitute)
        y = y[..., : wav.shape[-1]]
        mel = self.mel_loss(y, wav)
        wave = F.l1_loss(y.float(), wav.float())
        loss = self.c.mel_weight * mel + self.c.waveform_weight * wave + self.c.commitment_weight * commit
        metrics = {"mel": mel.detach(), "wave": wave.detach(), "commit": commit.detach()}
        if teacher is not None and self.distill is not None:
            distill = self.distill_loss(first, teacher)
            loss = loss + self.c.distill_weight * distill
            metrics["distill"] = distill.detach()
        disc = self._disc[0]
        if disc is not None and self.c.adversarial_weight > 0 and self.training:
            adv, feat = self.generator_adversarial(disc, y, wav)
            loss = loss + self.c.adversarial_weight * adv + self.c.feature_weight * feat
            metrics.update(adv=adv.detach(), feat=feat.detach())
            self.last = (wav.detach(), y.detach())
        return loss, metrics

    @staticmethod
    def generator_adversarial(disc: nn.Module, y: torch.Tensor, wav: torch.Tensor):
        fake = disc(y)
        with torch.no_grad():
            real = disc(wav)
        adv = sum(F.relu(1 - logits.float()).mean() for logits, _ in fake) / len(fake)
        feat = 0.0
        count = 0
        for (_, f_fake), (_, f_real) in zip(fake, real, strict=True):
            for a, b in zip(f_fake, f_real, strict=True):
                feat = feat + F.l1_loss(a.float(), b.float()) / (b.float().abs().mean() + 1e-8)
                count += 1
        return adv, feat / max(count, 1)


class CodecTask(TrainTask):
    """Trains a codec on random crops of the manifest's audio; held-out crops give the eval losses."""

    kind = "codec"

    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg = cfg
        self.info = info
        c = cfg.codec
        device = info.device
        arch = MimiConfig.from_dict(c.arch)
        init_codebooks = 0
        if c.init:
            self.mimi, init_codebooks = load_init_codec(cfg.path(c.init), arch, device)
            if init_codebooks < arch.n_q and not c.decoder_only:
                raise InputError(
                    f"{cfg.source}: [codec].init has {init_codebooks} codebooks, the architecture "
                    f"{arch.n_q}: new codebooks are learned with decoder_only = true (the init's codes kept)"
                )
        else:
            with torch.device(device):
                self.mimi = Mimi(arch)
            for module in self.mimi.quantizer.modules():
                if hasattr(module, "_initialized"):
                    module._initialized.fill_(0.0)  # seeded from the first batch
        self.mimi.float().train().requires_grad_(True)
        if c.decoder_only:
            if not c.init:
                raise InputError(f"{cfg.source}: [codec].decoder_only needs the codec to start from (init)")
            m = self.mimi
            for part in (m.encoder, m.encoder_transformer, m.downsample, m.quantizer):
                part.requires_grad_(False)
            for rvq in (m.quantizer.rvq_first, m.quantizer.rvq_rest):  # codes -> latent: decoder side
                rvq.output_proj.requires_grad_(True)
        elif c.code_noise > 0:
            raise InputError(f"{cfg.source}: [codec].code_noise needs decoder_only = true (frozen codebooks)")
        if c.code_noise > 0 and init_codebooks < arch.n_q:
            raise InputError(f"{cfg.source}: [codec].code_noise needs every codebook from the init (frozen)")
        if c.substitute_codes and (not c.decoder_only or init_codebooks < arch.n_q):
            raise InputError(
                f"{cfg.source}: [codec].substitute_codes needs decoder_only = true and every codebook "
                "from the init (the codes it replaces stay valid only with frozen codebooks)"
            )
        if c.code_noise > 0 and not 1 <= c.code_noise_neighbours < arch.bins:
            raise InputError(f"{cfg.source}: [codec].code_noise_neighbours must lie in [1, {arch.bins - 1}]")
        self.segment = int(round(c.segment_seconds * self.mimi.frame_rate)) * self.mimi.frame_size
        if self.segment < self.mimi.frame_size:
            raise InputError(f"{cfg.source}: [codec].segment_seconds must cover at least one 80 ms frame")
        self.disc = None
        if c.adversarial_weight > 0:
            with torch.device(device):
                self.disc = MultiScaleStftDiscriminator(c.disc_scales, c.disc_channels)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=c.disc_lr, betas=(0.5, 0.9))
        self._keys: dict[Path, str] = {}  # audio file -> its path as the manifest writes it
        self.files = self._files(
            cfg.data.train, cfg.data.train_split, exclude=cfg.data.eval_split if not cfg.data.eval else ""
        )
        if cfg.data.eval:
            self.eval_files = self._files(cfg.data.eval, cfg.data.eval_split)
        elif cfg.data.eval_split:
            self.eval_files = self._files(cfg.data.train, cfg.data.eval_split)
        else:
            self.eval_files = []
        self.eval_files = self.eval_files[: cfg.data.max_eval_items]
        self.teacher = self._teacher_features() if c.distill_weight > 0 else None
        # the substitutes, and the codebooks they stand for when they are expected codewords (else 0)
        self.substitutes, self.soft_levels = self._substitute_codes() if c.substitute_codes else (None, 0)
        teacher_dim = next(iter(self.teacher.values())).shape[-1] if self.teacher else None
        frozen = init_codebooks if c.decoder_only else 0
        self.module = CodecTrainModule(self.mimi, cfg, self.disc, teacher_dim, frozen, self.soft_levels).to(
            device
        )
        self.order = BatchOrder(len(self.files), cfg.optim.batch_size, cfg.run.seed, info.rank, info.world)
        self.gen = torch.Generator().manual_seed(cfg.run.seed * 104_729 + info.rank + 1)
        self._audio: dict[Path, torch.Tensor] = {}
        params = sum(p.numel() for p in self.mimi.parameters())
        log.info(
            "codec: %d parameters, %d training files, %d held out",
            params,
            len(self.files),
            len(self.eval_files),
        )

    def _files(self, manifest: str, split: str, exclude: str = "") -> list[Path]:
        path = self.cfg.path(manifest)
        utts = select(read_manifest(path), split)
        if exclude:
            utts = [u for u in utts if u.split != exclude]
        root = manifest_root(path)
        if not utts:
            raise InputError(f"{path}: no audio to train on")
        files = [u.audio_path(root) for u in utts]
        self._keys.update(zip(files, (u.audio for u in utts), strict=True))
        return files

    def _teacher_features(self) -> dict[Path, torch.Tensor]:
        """The teacher features of every training (and held-out) file, from `[codec].distill_features`."""
        from dsm.train.teacher import load_feature_cache

        c = self.cfg.codec
        if c.decoder_only:
            raise InputError(
                f"{self.cfg.source}: [codec].distill_weight trains the encoder: not with decoder_only"
            )
        if not c.distill_features:
            raise InputError(f"{self.cfg.source}: [codec].distill_weight > 0 needs distill_features")
        cache, rate = load_feature_cache(self.cfg.path(c.distill_features))
        if rate != self.mimi.frame_rate:
            raise InputError(
                f"{c.distill_features}: features at {rate} Hz, the codec runs at {self.mimi.frame_rate}"
            )
        missing = [p for p in self.files + self.eval_files if self._keys[p] not in cache]
        if missing:
            example = self._keys[missing[0]]
            raise InputError(
                f"{c.distill_features}: no teacher features for {len(missing)} files (e.g. {example}); "
                "make them from the training manifest with: dsm data teacher MANIFEST OUT"
            )
        return {p: cache[self._keys[p]] for p in self.files + self.eval_files}

    def _substitute_codes(self) -> tuple[dict[Path, torch.Tensor], int]:
        """What a TTS model gives for the training files that have some (`[codec].substitute_codes`): drawn
        codes [K, frames] (and 0), or expected acoustic codewords [codebook_dim, frames] standing for
        codebooks 1 .. K - 1 (floats; K in the file's metadata ``n_q``; and K)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = self.cfg.path(self.cfg.codec.substitute_codes)
        if not path.is_file():
            raise InputError(f"{path}: no substitute codes (scripts/bundled_data.py tts-codes makes them)")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        stored = {Path(k): v for k, v in load_file(str(path)).items()}
        found = {p: stored[p.resolve()] for p in self.files if p.resolve() in stored}
        if not found:
            raise InputError(f"{path}: codes for none of the {len(self.files)} training files")
        bins, n_q = self.mimi.cfg.bins, self.mimi.total_codebooks
        soft = {v.is_floating_point() for v in found.values()}
        if soft == {True}:
            dim = self.mimi.cfg.codebook_dim
            levels = int(meta.get("n_q", 0))
            if not 2 <= levels <= n_q or any(v.shape[0] != dim for v in found.values()):
                raise InputError(
                    f"{path}: expected [{dim}, frames] expected codewords for every file and metadata "
                    f"n_q in [2, {n_q}] (the codebooks they stand for)"
                )
            log.info("expected codewords for %d of %d training files", len(found), len(self.files))
            return {p: v.float() for p, v in found.items()}, levels
        found = {p: v.long() for p, v in found.items()}
        levels = {v.shape[0] for v in found.values()}
        if soft != {False} or len(levels) != 1 or not 1 <= levels.pop() <= n_q:
            raise InputError(f"{path}: expected [K, frames] codes with the same K <= {n_q} for every file")
        if any(int(v.max()) >= bins or int(v.min()) < -1 for v in found.values()):
            raise InputError(f"{path}: codes outside [-1, {bins})")
        log.info("substitute codes for %d of %d training files", len(found), len(self.files))
        return found, 0

    def _wav(self, path: Path) -> torch.Tensor:
        if path not in self._audio:
            self._audio[path] = torch.from_numpy(read_audio(str(path), sample_rate=self.mimi.sample_rate))
        return self._audio[path]

    def _crop(self, path: Path, random: bool) -> tuple[torch.Tensor, int]:
        """A `segment` of the file (zero-padded when shorter) and its start sample."""
        wav = self._wav(path)
        if wav.shape[0] <= self.segment:
            return F.pad(wav, (0, self.segment - wav.shape[0])), 0
        start = 0
        if random:
            if self.teacher is None and self.substitutes is None:
                start = int(torch.randint(wav.shape[0] - self.segment + 1, (1,), generator=self.gen))
            else:  # on a frame boundary, where the teacher's (or drawn codes') frames start
                frames = (wav.shape[0] - self.segment) // self.mimi.frame_size + 1
                start = int(torch.randint(frames, (1,), generator=self.gen)) * self.mimi.frame_size
        return wav[start : start + self.segment], start

    def _teacher_crop(self, path: Path, start: int) -> torch.Tensor:
        """The teacher's frames of a crop [frames, D] (zero rows past the end of the file)."""
        assert self.teacher is not None
        n = self.segment // self.mimi.frame_size
        first = start // self.mimi.frame_size
        feats = self.teacher[path][first : first + n]
        return F.pad(feats, (0, 0, 0, n - feats.shape[0]))

    def _substitute_crop(self, path: Path, start: int) -> torch.Tensor:
        """The substitutes of a crop [K or codebook_dim, frames], -1 (NaN for expected codewords) where there
        are none (the true codes stay)."""
        assert self.substitutes is not None
        n = self.segment // self.mimi.frame_size
        k = next(iter(self.substitutes.values())).shape[0]
        fill = float("nan") if self.soft_levels else -1
        first = start // self.mimi.frame_size
        empty = torch.full((k, 0), fill, dtype=torch.float if self.soft_levels else torch.long)
        codes = self.substitutes.get(path, empty)[:, first : first + n]
        return F.pad(codes, (0, n - codes.shape[1]), value=fill)

    def next_batch(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        picks = [(self.files[i], *self._crop(self.files[i], random=True)) for i in self.order.next()]
        wav = torch.stack([crop for _, crop, _ in picks])[:, None].to(self.info.device)
        teacher = None
        if self.teacher is not None:
            teacher = torch.stack([self._teacher_crop(path, start) for path, _, start in picks])
            teacher = teacher.to(self.info.device)
        substitute = None
        if self.substitutes is not None:  # per batch: all of it decodes from the drawn codes, or none
            draw = float(torch.rand((), generator=self.gen))
            if draw < self.cfg.codec.substitute_prob:
                substitute = torch.stack([self._substitute_crop(path, start) for path, _, start in picks])
                substitute = substitute.to(self.info.device)
        if teacher is None and substitute is None:
            return wav
        return wav, teacher, substitute

    def evaluate(self, module: nn.Module, rank: int, world: int) -> dict[str, tuple[float, float]]:
        sums = {"loss": [0.0, 0.0], "mel": [0.0, 0.0], "wave": [0.0, 0.0]}
        if self.teacher is not None:
            sums["distill"] = [0.0, 0.0]
        for i in range(rank, len(self.eval_files), world):
            crop, start = self._crop(self.eval_files[i], random=False)
            wav = crop[None, None].to(self.info.device)
            inner = getattr(module, "module", module)
            y, _, first = inner.reconstruct(wav, self.mimi.total_codebooks, update=False)
            y = y[..., : wav.shape[-1]]
            mel = float(inner.mel_loss(y, wav))
            wave = float(F.l1_loss(y.float(), wav.float()))
            c = self.cfg.codec
            values = [("loss", c.mel_weight * mel + c.waveform_weight * wave), ("mel", mel), ("wave", wave)]
            if self.teacher is not None:
                teacher = self._teacher_crop(self.eval_files[i], start)[None].to(self.info.device)
                values.append(("distill", float(inner.distill_loss(first, teacher))))
            for name, value in values:
                sums[name][0] += value
                sums[name][1] += 1
        return {k: (v[0], v[1]) for k, v in sums.items()}

    def after_step(self) -> dict[str, float]:
        if self.disc is None or self.module.last is None:
            return {}
        wav, y = self.module.last
        self.disc_opt.zero_grad(set_to_none=True)
        loss = 0.0
        for (real, _), (fake, _) in zip(self.disc(wav), self.disc(y), strict=True):
            loss = loss + F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()
        loss = loss / len(self.disc.discs)
        loss.backward()
        if self.info.distributed:
            for p in self.disc.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.info.world
        self.disc_opt.step()
        self.module.last = None
        return {"disc": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])
        self.gen.set_state(state["gen"])
        for module in self.mimi.quantizer.modules():
            if hasattr(module, "_clear"):
                module._clear()

    def extra_state(self) -> dict[str, Any]:
        if self.disc is None:
            return {}
        return {"disc": self.disc.state_dict(), "disc_opt": self.disc_opt.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])

    def export(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_mimi(self.mimi, out_dir / WEIGHTS_NAME)
        (out_dir / CONFIG_NAME).write_text(json.dumps(self.mimi.cfg.to_dict(), indent=2) + "\n")
        log.info("exported the codec to %s", out_dir)
