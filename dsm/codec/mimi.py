"""Mimi: Kyutai's streaming neural audio codec (24 kHz audio <-> 12.5 Hz frames of up to 32 codes).

Pipeline: SEANet encoder (25 Hz) -> transformer -> stride-2 conv (12.5 Hz) -> split RVQ, and back:
RVQ decode -> depthwise stride-2 transposed conv (25 Hz) -> transformer -> SEANet decoder.

`Mimi.encode` / `Mimi.decode` run one-shot. `Mimi.streaming_encoder(B)` and `Mimi.streaming_decoder(B)`
return objects holding the state of B independent streams, stepped together on whole 80 ms frames;
any subset of streams can be reset (or left idle) without touching the others, and the results
equal the one-shot ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from dsm.codec.quantizer import SplitResidualVQ
from dsm.codec.seanet import SeanetConfig, SeanetDecoder, SeanetEncoder
from dsm.errors import InputError
from dsm.nn.conv import StreamingConv1d, StreamingConvTranspose1d
from dsm.nn.transformer import Transformer, TransformerConfig, TransformerState


@dataclass
class MimiConfig:
    """Architecture of a Mimi codec; the defaults are Kyutai's published model."""

    sample_rate: int = 24_000
    frame_rate: float = 12.5
    seanet: SeanetConfig = field(default_factory=SeanetConfig)
    # transformers
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250
    max_period: float = 10_000.0
    layer_scale: float | None = 0.01
    # quantizer
    n_q: int = 32
    n_q_semantic: int = 1
    codebook_dim: int = 256
    bins: int = 2048

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MimiConfig:
        """A config from a table of its fields, SeanetConfig fields in a ``seanet`` sub-table (the form of
        `to_dict`, of the training configs' ``[codec.arch]`` and of config.json's ``mimi_config``)."""
        if not isinstance(raw, dict):
            raise InputError(f"Mimi config: expected a table of fields, got {type(raw).__name__}")
        raw = dict(raw)
        seanet_raw = dict(raw.pop("seanet", {}))
        known = {f.name for f in fields(cls)} - {"seanet"}
        seanet_known = {f.name for f in fields(SeanetConfig)}
        bad = sorted(set(raw) - known) + [f"seanet.{k}" for k in sorted(set(seanet_raw) - seanet_known)]
        if bad:
            raise InputError(f"unknown Mimi config keys: {', '.join(bad)}")
        if "ratios" in seanet_raw:
            seanet_raw["ratios"] = tuple(seanet_raw["ratios"])
        try:
            cfg = cls(seanet=SeanetConfig(**seanet_raw), **raw)
        except TypeError as e:
            raise InputError(f"Mimi config: {e}") from e
        if cfg.sample_rate % cfg.seanet.hop_length or cfg.encoder_frame_rate % cfg.frame_rate:
            raise InputError(
                "Mimi config: the SEANet hop must divide the sample rate into a multiple of the frame rate"
            )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON/TOML values (`from_dict` reads them back)."""
        out = asdict(self)
        out["seanet"]["ratios"] = list(self.seanet.ratios)
        if not self.seanet.decoder_n_filters:  # the encoder's width: Kyutai's configs have no such key
            del out["seanet"]["decoder_n_filters"]
        return out

    @property
    def channels(self) -> int:
        return self.seanet.channels

    @property
    def dimension(self) -> int:
        return self.seanet.dimension

    @property
    def hop_length(self) -> int:
        return self.seanet.hop_length

    @property
    def frame_size(self) -> int:
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def resample_stride(self) -> int:
        return int(self.encoder_frame_rate / self.frame_rate)


class _ConvLayoutTransformer(nn.Module):
    """Transformer applied to [B, C, T] tensors (Kyutai key prefix `<name>.transformer.`)."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.transformer = Transformer(
            TransformerConfig(
                d_model=cfg.dimension,
                num_heads=cfg.num_heads,
                num_layers=cfg.num_layers,
                dim_feedforward=cfg.dim_feedforward,
                context=cfg.context,
                max_period=cfg.max_period,
                layer_scale=cfg.layer_scale,
            )
        )

    def init_state(self, batch_size: int, fast: bool = True) -> TransformerState:
        return self.transformer.init_state(batch_size, fast)

    def forward(self, x: torch.Tensor, state=None, active=None) -> torch.Tensor:
        return self.transformer(x.transpose(1, 2), state, active).transpose(1, 2)


class _Downsample(nn.Module):
    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.conv = StreamingConv1d(dim, dim, 2 * stride, stride=stride, bias=False, pad_mode="replicate")

    def init_state(self, batch_size: int, fast: bool = True):
        return self.conv.init_state(batch_size, fast)

    def forward(self, x, state=None, active=None):
        return self.conv(x, state, active)


class _Upsample(nn.Module):
    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.convtr = StreamingConvTranspose1d(dim, dim, 2 * stride, stride=stride, groups=dim, bias=False)

    def init_state(self, batch_size: int, fast: bool = True):
        return self.convtr.init_state(batch_size, fast)

    def forward(self, x, state=None, active=None):
        return self.convtr(x, state, active)


class Mimi(nn.Module):
    """The Mimi codec. Build with `Mimi(MimiConfig())`, load weights with `dsm.codec.load_mimi`."""

    def __init__(self, cfg: MimiConfig | None = None):
        super().__init__()
        cfg = cfg or MimiConfig()
        self.cfg = cfg
        self.encoder = SeanetEncoder(cfg.seanet)
        self.decoder = SeanetDecoder(cfg.seanet)
        self.encoder_transformer = _ConvLayoutTransformer(cfg)
        self.decoder_transformer = _ConvLayoutTransformer(cfg)
        self.downsample = _Downsample(cfg.dimension, cfg.resample_stride)
        self.upsample = _Upsample(cfg.dimension, cfg.resample_stride)
        self.quantizer = SplitResidualVQ(
            n_q=cfg.n_q,
            n_q_semantic=cfg.n_q_semantic,
            dimension=cfg.codebook_dim,
            input_dimension=cfg.dimension,
            output_dimension=cfg.dimension,
            bins=cfg.bins,
        )
        self.num_codebooks = cfg.n_q

    # -- properties -------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.cfg.frame_rate

    @property
    def frame_size(self) -> int:
        return self.cfg.frame_size

    @property
    def cardinality(self) -> int:
        return self.cfg.bins

    @property
    def total_codebooks(self) -> int:
        return self.quantizer.max_n_q

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the convolutions and transformers (the quantizer always runs in float32)."""
        return self.encoder.model[0].conv.conv.weight.dtype

    def to_dtype(self, dtype: torch.dtype) -> Mimi:
        """Run the networks in `dtype` (e.g. bfloat16 for speed), keeping codebook search in float32.

        float32 reproduces the reference exactly; bfloat16 is a faster approximation whose error is
        measured in `benchmarks/codec.py`.
        """
        for module in (
            self.encoder,
            self.decoder,
            self.encoder_transformer,
            self.decoder_transformer,
            self.downsample,
            self.upsample,
        ):
            module.to(dtype)
        self.quantizer.float()
        return self

    def set_num_codebooks(self, n: int) -> None:
        """Number of codebooks `encode` produces (1..32)."""
        self.num_codebooks = self._check_n_q(n)

    def _check_n_q(self, n: int) -> int:
        if not 1 <= n <= self.total_codebooks:
            raise InputError(f"number of codebooks must be between 1 and {self.total_codebooks}, got {n}")
        return n

    # -- validation -------------------------------------------------------------------------------
    def _check_wav(self, wav: torch.Tensor) -> None:
        if wav.dim() != 3 or wav.shape[1] != self.cfg.channels:
            raise InputError(
                f"audio must have shape [batch, {self.cfg.channels}, samples], got {list(wav.shape)}"
            )
        if wav.shape[-1] == 0:
            raise InputError("audio is empty (0 samples)")
        if not wav.is_floating_point():
            raise InputError(f"audio must be floating point, got {wav.dtype}")

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 3:
            raise InputError(f"codes must have shape [batch, n_q, frames], got {list(codes.shape)}")
        if codes.is_floating_point() or codes.dtype == torch.bool:
            raise InputError(f"codes must be integers, got {codes.dtype}")
        if not 1 <= codes.shape[1] <= self.total_codebooks:
            raise InputError(
                f"codes have {codes.shape[1]} codebooks; Mimi decodes between 1 and {self.total_codebooks}"
            )
        if codes.shape[-1] == 0:
            raise InputError("codes have 0 frames")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cardinality):
            raise InputError(
                f"codes must lie in [0, {self.cardinality - 1}], got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )

    # -- one-shot ---------------------------------------------------------------------------------
    def encode_to_latent(self, wav: torch.Tensor) -> torch.Tensor:
        """Unquantized 12.5 Hz latent [B, 512, F]; `wav` [B, 1, T] is zero-padded to whole frames."""
        self._check_wav(wav)
        pad = -wav.shape[-1] % self.frame_size
        if pad:
            wav = torch.nn.functional.pad(wav, (0, pad))
        emb = self.encoder(wav.to(self.dtype))
        emb = self.encoder_transformer(emb)
        return self.downsample(emb).float()

    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """wav [B, 1, T] float -> codes [B, n_q, ceil(T / 1920)] int64."""
        latent = self.encode_to_latent(wav)
        return self.quantizer.encode(latent, self._check_n_q(self.num_codebooks if n_q is None else n_q))

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, F] -> quantized latent [B, 512, F] (sums every codebook given)."""
        self._check_codes(codes)
        return self.quantizer.decode(codes).to(self.dtype)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, F] with 1 <= K <= 32 -> wav [B, 1, F * 1920]."""
        return self.decode_from_latent(self.decode_latent(codes))

    def decode_from_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """A quantizer-side latent [B, 512, F] (what `decode_latent` returns) -> wav [B, 1, F * 1920]."""
        emb = self.upsample(latent.to(self.dtype))
        emb = self.decoder_transformer(emb)
        return self.decoder(emb)

    # -- streaming --------------------------------------------------------------------------------
    def streaming_encoder(
        self, batch_size: int, n_q: int | None = None, exact: bool = False
    ) -> MimiStreamingEncoder:
        """Streaming encoder for `batch_size` independent streams.

        `exact=True` runs the reference's own kernels, reproducing its streaming codes bit for bit;
        the default runs faster GEMM forms that agree up to float rounding (so a code can differ
        where two codewords are within rounding of each other).
        """
        n_q = self._check_n_q(self.num_codebooks if n_q is None else n_q)
        return MimiStreamingEncoder(self, batch_size, n_q, exact)

    def streaming_decoder(self, batch_size: int, exact: bool = False) -> MimiStreamingDecoder:
        """Streaming decoder for `batch_size` independent streams (`exact` as for the encoder)."""
        return MimiStreamingDecoder(self, batch_size, exact)


def _mask(batch_size: int, streams, device: torch.device) -> torch.Tensor:
    """A [B] bool mask from None (all), a bool tensor, or a list of stream indices."""
    if streams is None:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    if isinstance(streams, torch.Tensor) and streams.dtype == torch.bool:
        if streams.shape != (batch_size,):
            raise InputError(f"stream mask must have shape [{batch_size}], got {list(streams.shape)}")
        return streams.to(device)
    mask = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for i in list(streams):
        if not 0 <= int(i) < batch_size:
            raise InputError(f"stream index {int(i)} out of range for {batch_size} streams")
        mask[int(i)] = True
    return mask


def _reset_states(states, mask: torch.Tensor) -> None:
    for s in states:
        if s is None:
            continue
        if isinstance(s, list):
            _reset_states(s, mask)
        else:
            s.reset(mask)


class _Stream:
    """Shared bookkeeping of a batch of B codec streams."""

    def __init__(self, mimi: Mimi, batch_size: int, modules: list[nn.Module], exact: bool):
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        self.mimi = mimi
        self.batch_size = batch_size
        self.exact = exact
        self.device = next(mimi.parameters()).device
        self.states = [m.init_state(batch_size, fast=not exact) for m in modules]
        self.frames = torch.zeros(batch_size, dtype=torch.long)

    def reset(self, streams=None) -> None:
        """Restart the given streams (indices, bool mask, or None for all) from a blank state."""
        mask = _mask(self.batch_size, streams, self.device)
        _reset_states(self.states, mask)
        self.frames[mask.cpu()] = 0

    def _active(self, active) -> torch.Tensor | None:
        if active is None:
            return None
        return _mask(self.batch_size, active, self.device)

    def _advance(self, active: torch.Tensor | None, n: int) -> None:
        if active is None:
            self.frames += n
        else:
            self.frames[active.cpu()] += n


class MimiStreamingEncoder(_Stream):
    """Encodes B independent audio streams chunk by chunk (each chunk a whole number of frames)."""

    def __init__(self, mimi: Mimi, batch_size: int, n_q: int, exact: bool = False):
        m = mimi
        super().__init__(mimi, batch_size, [m.encoder, m.encoder_transformer, m.downsample], exact)
        self.n_q = n_q

    @torch.inference_mode()
    def step(self, wav: torch.Tensor, active=None) -> torch.Tensor:
        """wav [B, 1, k * 1920] -> codes [B, n_q, k]. Streams not in `active` keep their state."""
        latent = self.step_latent(wav, active)
        return self.mimi.quantizer.encode(latent, self.n_q, exact=self.exact)

    @torch.inference_mode()
    def step_latent(self, wav: torch.Tensor, active=None) -> torch.Tensor:
        """wav [B, 1, k * 1920] -> unquantized float32 latent [B, 512, k] (advances the streams)."""
        mimi = self.mimi
        mimi._check_wav(wav)
        if wav.shape[0] != self.batch_size:
            raise InputError(f"expected {self.batch_size} streams, got a batch of {wav.shape[0]}")
        if wav.shape[-1] % mimi.frame_size:
            raise InputError(
                f"streaming encode takes whole frames of {mimi.frame_size} samples, got {wav.shape[-1]}"
            )
        mask = self._active(active)
        enc, tr, down = self.states
        emb = mimi.encoder(wav.to(self.device, mimi.dtype), enc, mask)
        emb = mimi.encoder_transformer(emb, tr, mask)
        emb = mimi.downsample(emb, down, mask)
        self._advance(mask, emb.shape[-1])
        return emb.float()


class MimiStreamingDecoder(_Stream):
    """Decodes B independent code streams frame by frame (or several frames per call)."""

    def __init__(self, mimi: Mimi, batch_size: int, exact: bool = False):
        m = mimi
        super().__init__(mimi, batch_size, [m.upsample, m.decoder_transformer, m.decoder], exact)

    @torch.inference_mode()
    def step(self, codes: torch.Tensor, active=None) -> torch.Tensor:
        """codes [B, K, k] -> wav [B, 1, k * 1920]. Streams not in `active` keep their state."""
        if codes.dim() == 3 and codes.shape[0] != self.batch_size:
            raise InputError(f"expected {self.batch_size} streams, got a batch of {codes.shape[0]}")
        return self.step_latent(self.mimi.decode_latent(codes.to(self.device)), active)

    @torch.inference_mode()
    def step_latent(self, latent: torch.Tensor, active=None) -> torch.Tensor:
        """A quantizer-side latent [B, 512, k] (`Mimi.decode_latent`'s, or any other, e.g. code vectors
        averaged under a model's distribution) -> wav [B, 1, k * 1920]."""
        mimi = self.mimi
        if latent.dim() != 3 or latent.shape[0] != self.batch_size:
            raise InputError(f"expected a latent [{self.batch_size}, C, frames], got {list(latent.shape)}")
        mask = self._active(active)
        up, tr, dec = self.states
        emb = mimi.upsample(latent.to(self.device, mimi.dtype), up, mask)
        emb = mimi.decoder_transformer(emb, tr, mask)
        self._advance(mask, latent.shape[-1])
        return mimi.decoder(emb, dec, mask)
