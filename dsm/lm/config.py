"""`LMConfig`: a DSM language model's architecture, read from Kyutai's `config.json`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from dsm.errors import CheckpointError
from dsm.nn.transformer import TransformerConfig

# Keys of a Kyutai config.json that describe files and generation, not the network.
META_KEYS = (
    "moshi_name",
    "mimi_name",
    "mimi_config_name",
    "tokenizer_name",
    "lora_name",
    "model_type",
    "lm_gen_config",
    "tts_config",
    "stt_config",
    "model_id",
    # dsm extensions: the codec architecture of models trained on a smaller codec, TTS voice and
    # sampling defaults
    "mimi_config",
    "voice_repo",
    "default_voice",
    "generation",
)
# Accepted for compatibility and ignored: they change nothing at inference.
IGNORED_KEYS = (
    "depformer_causal",
    "depformer_context",
    "gradient_checkpointing",
    "lora",
    "lora_rank",
    "lora_scaling",
    "quantize",
)
# Keys forwarded to the temporal transformer (and, unless overridden by a `depformer_` key, the depformer).
TRANSFORMER_KEYS = (
    "num_layers",
    "gating",
    "layer_scale",
    "max_period",
    "positional_embedding",
    "positional_scale",
    "cross_attention",
    "kv_repeat",
    "causal",
    "norm",
)


@dataclass
class LMConfig:
    delays: list[int]
    n_q: int = 8
    dep_q: int = 8
    card: int = 1024
    text_card: int = 32000
    text_card_out: int | None = None
    demux_second_text_stream: bool = False
    dim: int = 128
    num_heads: int = 8
    hidden_scale: float = 4
    norm_emb: bool = False
    bias_proj: bool = False
    context: int | None = None
    existing_text_padding_id: int = 3
    existing_text_end_padding_id: int = 0
    extra_heads_num_heads: int = 0
    extra_heads_dim: int = 6
    # transformer settings shared with the depformer unless overridden
    num_layers: int = 2
    norm: str = "layer_norm"
    gating: str = "none"
    positional_embedding: str = "sin"
    max_period: float = 10_000.0
    positional_scale: float = 1.0
    layer_scale: float | None = None
    cross_attention: bool = False
    kv_repeat: int = 1
    causal: bool = True
    # depformer
    depformer_dim: int = 256
    depformer_dim_feedforward: int | list[int] | None = None
    depformer_multi_linear: bool = False
    depformer_weights_per_step: bool = False
    depformer_weights_per_step_schedule: list[int] | None = None
    depformer_low_rank_embeddings: int | None = None
    depformer_pos_emb: str = "sin"
    depformer_norm: str | None = None
    depformer_overrides: dict[str, Any] = field(default_factory=dict)  # other depformer_* keys
    # conditioning (raw config sections; see dsm.lm.conditioners)
    conditioners: dict[str, Any] | None = None
    fuser: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.delays) != self.n_q + 1:
            raise CheckpointError(
                f"config: expected {self.n_q + 1} delays (text + n_q), got {len(self.delays)}"
            )
        if self.depformer_weights_per_step_schedule is not None and (
            len(self.depformer_weights_per_step_schedule) != self.dep_q
        ):
            raise CheckpointError("config: depformer_weights_per_step_schedule must have dep_q entries")

    @property
    def num_codebooks(self) -> int:
        return self.n_q + 1

    @property
    def text_out(self) -> int:
        return self.text_card if self.text_card_out is None else self.text_card_out

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    def temporal(self) -> TransformerConfig:
        return TransformerConfig(
            d_model=self.dim,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            dim_feedforward=int(self.hidden_scale * self.dim),
            causal=self.causal,
            context=self.context,
            norm=self.norm,
            gating=self.gating,
            positional_embedding=self.positional_embedding,
            max_period=self.max_period,
            positional_scale=self.positional_scale,
            layer_scale=self.layer_scale,
            cross_attention=self.cross_attention,
            kv_repeat=self.kv_repeat,
        )

    def depformer(self) -> TransformerConfig:
        shared = {k: getattr(self, k) for k in TRANSFORMER_KEYS}
        shared.update(self.depformer_overrides)
        ff = self.depformer_dim_feedforward
        return TransformerConfig(
            d_model=self.depformer_dim,
            num_heads=shared.pop("num_heads", self.num_heads),
            num_layers=shared.pop("num_layers"),
            dim_feedforward=int(self.hidden_scale * self.depformer_dim) if ff is None else ff,
            context=None,
            positional_embedding=self.depformer_pos_emb,
            cross_attention=False,
            weights_per_step=self.dep_q if self.depformer_weights_per_step else 0,
            weights_per_step_schedule=self.depformer_weights_per_step_schedule,
            **{k: v for k, v in shared.items() if k not in ("positional_embedding", "cross_attention")},
        )

    @classmethod
    def from_kyutai(cls, raw: dict[str, Any]) -> LMConfig:
        """Build from a Kyutai `config.json` dict; unknown keys are an error (as in the reference)."""
        raw = dict(raw)
        meta = {k: raw.pop(k) for k in META_KEYS if k in raw}
        for key in IGNORED_KEYS:
            raw.pop(key, None)
        if "demux_second_stream" in raw:
            raw["demux_second_text_stream"] = raw.pop("demux_second_stream")
        known = {f.name for f in fields(cls)} - {"depformer_overrides", "meta"}
        overrides = {}
        for key in list(raw):
            if key.startswith("depformer_") and key not in known:
                overrides[key.removeprefix("depformer_")] = raw.pop(key)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CheckpointError(f"config: unknown keys {', '.join(unknown)}")
        allowed = set(TRANSFORMER_KEYS) | {"num_heads", "dim_feedforward"}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise CheckpointError(f"config: unknown keys {', '.join('depformer_' + k for k in bad)}")
        if "delays" not in raw:
            raise CheckpointError("config: missing 'delays'")
        return cls(**raw, depformer_overrides=overrides, meta=meta)
