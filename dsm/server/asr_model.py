"""Loading the model of a `BatchedAsr` module: Mimi, the STT language model and its tokenizer.

A module names its files as moshi-server does (`lm_model_file`, `text_tokenizer_file`,
`audio_tokenizer_file`) with the architecture in candle's `model` table, which `lm_config_from_candle`
turns into an `LMConfig` (the feed-forward width is read from the checkpoint itself: candle's
`dim_feedforward` does not say how its gated layers round it). A dsm module may instead name a Kyutai
`config.json` (`config_file`) or a whole repo (`hf_repo`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsm.codec import Mimi, MimiConfig, load_mimi
from dsm.codec.loader import check_state_dict, read_safetensors
from dsm.errors import CheckpointError, InputError
from dsm.lm import LMConfig
from dsm.lm.loader import normalize_lm_keys, read_config
from dsm.lm.model import LMModel
from dsm.server.config import AsrModuleConfig
from dsm.stt.checkpoint import SttCheckpoint, load_tokenizer
from dsm.stt.timestamps import FRAME_RATE, TextTokenizer

__all__ = [
    "AsrModel",
    "lm_config_from_candle",
    "load_asr_model",
    "mimi_config_from_table",
    "parse_dtype",
    "pick_device",
]

_NORMS = {"rmsnorm": "rms_norm_f32", "rms_norm": "rms_norm_f32", "layernorm": "layer_norm"}
_POS = {"rope": "rope", "sin": "sin", "none": "none"}
_EMB = re.compile(r"^emb\.(\d+)\.")


@dataclass
class AsrModel:
    """Everything a batched STT loop needs."""

    mimi: Mimi
    lm: LMModel
    tokenizer: TextTokenizer
    asr_delay_in_tokens: int
    prefix_seconds: float  # offline recipe (REST): silence before the audio
    delay_seconds: float  # offline recipe (REST): the text delay; silence after the audio
    temperature: float = 0.0
    top_k: int = 50
    exact: bool = False
    quantize: str | None = None
    description: str = ""

    @property
    def n_q(self) -> int:
        return self.lm.cfg.n_q - self.lm.cfg.dep_q

    @property
    def num_heads(self) -> int:
        return self.lm.cfg.extra_heads_num_heads

    @property
    def prefix_chunks(self) -> int:
        return math.ceil(self.prefix_seconds * FRAME_RATE)

    @property
    def suffix_chunks(self) -> int:
        return math.ceil(self.delay_seconds * FRAME_RATE)


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else the CPU (the reference's order, without Metal)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device: not a torch device: {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name}: CUDA is not available on this machine (use cpu)")
    return device


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "f16": torch.float16,
        "float16": torch.float16,
        "f32": torch.float32,
        "float32": torch.float32,
    }
    if name.lower() not in table:
        raise InputError(f"dtype_override: expected bf16, f16 or f32, got {name!r}")
    return table[name.lower()]


def _shapes(path: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found") from e
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def lm_config_from_candle(table: dict[str, Any], weights: Path, where: str = "model") -> LMConfig:
    """An `LMConfig` from moshi-server's candle `model` table (STT models: no depformer, no conditioners)."""

    def need(t: dict[str, Any], key: str, kinds: tuple[type, ...], sub: str = "") -> Any:
        if key not in t:
            raise InputError(f"{where}{sub}: missing '{key}'")
        value = t[key]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise InputError(f"{where}{sub}.{key}: unexpected value {value!r}")
        return value

    tr = table.get("transformer")
    if not isinstance(tr, dict):
        raise InputError(f"{where}: missing the [transformer] table")
    if table.get("depformer") or table.get("conditioners"):
        raise InputError(f"{where}: depformer/conditioners are not supported by a BatchedAsr module")
    if tr.get("cross_attention"):
        raise InputError(f"{where}.transformer: cross_attention is not supported by a BatchedAsr module")
    n_q = need(table, "audio_codebooks", (int,))
    text_in = need(table, "text_in_vocab_size", (int,))
    text_out = int(table.get("text_out_vocab_size", text_in - 1))
    dim = need(tr, "d_model", (int,), ".transformer")
    gating = str(tr.get("gating") or "none").lower()
    norm = _NORMS.get(str(tr.get("norm", "RmsNorm")).lower())
    pos = _POS.get(str(tr.get("positional_embedding", "Rope")).lower())
    if norm is None or pos is None:
        raise InputError(f"{where}.transformer: unsupported norm or positional_embedding")
    shapes = _shapes(weights)
    ff_key = (
        "transformer.layers.0.gating.linear_in.weight"
        if gating != "none"
        else ("transformer.layers.0.linear1.weight")
    )
    if ff_key not in shapes:
        raise CheckpointError(f"{weights}: no tensor {ff_key} (does the [model] table match the file?)")
    if gating != "none":
        hidden = shapes[ff_key][0] // 2
        ff = 4 * dim if hidden == (21 * dim) // 8 else math.ceil(3 * hidden / 2)
    else:
        ff = shapes[ff_key][0]
    hidden_scale = ff / dim if int(ff / dim * dim) == ff else (ff + 0.5) / dim
    extra = table.get("extra_heads") or {}
    raw = {
        "dim": dim,
        "num_heads": need(tr, "num_heads", (int,), ".transformer"),
        "num_layers": need(tr, "num_layers", (int,), ".transformer"),
        "hidden_scale": hidden_scale,
        "context": tr.get("context"),
        "max_period": float(tr.get("max_period", 10000)),
        "norm": norm,
        "gating": gating,
        "positional_embedding": pos,
        "kv_repeat": int(tr.get("kv_repeat", 1)),
        "layer_scale": tr.get("layer_scale"),
        "causal": bool(tr.get("causal", True)),
        "card": need(table, "audio_vocab_size", (int,)) - 1,
        "n_q": n_q,
        "dep_q": 0,
        "depformer_multi_linear": True,  # no depformer input projection: an STT checkpoint has none
        "text_card": text_in - 1,
        "delays": [0] * (n_q + 1),
        "extra_heads_num_heads": int(extra.get("num_heads", 0)),
        "extra_heads_dim": int(extra.get("dim", 6)),
    }
    if text_out != text_in - 1:
        raw["text_card_out"] = text_out
    try:
        return LMConfig.from_kyutai(raw)
    except CheckpointError as e:
        raise InputError(f"{where}: {e}") from e


def _load_lm(weights: Path, config: LMConfig, device: torch.device, dtype: torch.dtype) -> LMModel:
    """As `dsm.lm.load_lm`, dropping the audio embeddings beyond the configured `audio_codebooks` (candle
    loads only those, so a config may read fewer codebooks than the checkpoint holds)."""
    state = normalize_lm_keys(read_safetensors(weights))
    state = {k: v for k, v in state.items() if not ((m := _EMB.match(k)) and int(m.group(1)) >= config.n_q)}
    with torch.device("meta"):
        model = LMModel(config)
    check_state_dict(model, state, str(weights))
    state = {k: (v.to(dtype) if v.is_floating_point() else v).to(device) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def mimi_config_from_table(table: dict[str, Any] | None, where: str) -> MimiConfig | None:
    """A module's `mimi_config` table (MimiConfig fields, SeanetConfig fields in a `seanet` sub-table, as
    the training configs write them), or None for Kyutai's codec."""
    if not table:
        return None
    try:
        return MimiConfig.from_dict(table)
    except InputError as e:
        raise InputError(f"{where}.mimi_config: {e}") from e


def load_asr_model(cfg: AsrModuleConfig, device: str | None = None) -> AsrModel:
    """Load the module's model on `device` (default: the module's `device` setting)."""
    where = f"modules.{cfg.name}"
    dev = pick_device(device or cfg.device)
    dtype = parse_dtype(cfg.dtype_override, dev)
    stt: dict[str, Any] = {}
    top_k = 50
    mimi_config = None
    if cfg.hf_repo is not None:
        ckpt = SttCheckpoint.resolve(
            cfg.hf_repo,
            moshi_weight=cfg.lm_model_file,
            mimi_weight=cfg.audio_tokenizer_file,
            tokenizer=cfg.text_tokenizer_file,
            config_path=cfg.config_file,
        )
        lm_config, weights, mimi_file, tok_file = (
            ckpt.lm_config,
            ckpt.moshi_weight,
            ckpt.mimi_weight,
            ckpt.tokenizer,
        )
        stt = dict(ckpt.raw_config.get("stt_config") or {})
        mimi_config = ckpt.mimi_config
        top_k = int(ckpt.lm_gen_config.get("top_k_text", top_k))
    else:
        weights, mimi_file, tok_file = (
            Path(cfg.lm_model_file),
            Path(cfg.audio_tokenizer_file),
            Path(cfg.text_tokenizer_file),
        )
        if cfg.config_file is not None:
            import json

            lm_config = read_config(cfg.config_file)
            stt = dict(json.loads(Path(cfg.config_file).read_text()).get("stt_config") or {})
        else:
            lm_config = lm_config_from_candle(cfg.model or {}, weights, f"{where}.model")
    if lm_config.dep_q or lm_config.conditioners:
        raise InputError(f"{where}: not a speech-to-text model (it has a depformer or conditioners)")
    tokenizer = load_tokenizer(tok_file)
    if tokenizer.vocab_size() < lm_config.text_out:
        raise CheckpointError(
            f"{tok_file}: the tokenizer has {tokenizer.vocab_size()} pieces but the model writes "
            f"{lm_config.text_out} text tokens (wrong text_tokenizer_file?)"
        )
    lm = _load_lm(weights, lm_config, dev, dtype)
    mimi = load_mimi(
        mimi_file,
        config=mimi_config_from_table(cfg.mimi_config, where) or mimi_config,
        device=dev,
        num_codebooks=lm_config.n_q,
    )
    delay_s = cfg.audio_delay_seconds
    if delay_s is None:
        delay_s = float(stt.get("audio_delay_seconds", cfg.asr_delay_in_tokens / FRAME_RATE))
    prefix_s = cfg.audio_silence_prefix_seconds
    if prefix_s is None:
        prefix_s = float(stt.get("audio_silence_prefix_seconds", 0.0))
    return AsrModel(
        mimi=mimi,
        lm=lm,
        tokenizer=tokenizer,
        asr_delay_in_tokens=cfg.asr_delay_in_tokens,
        prefix_seconds=prefix_s,
        delay_seconds=delay_s,
        temperature=cfg.temperature,
        top_k=top_k,
        exact=cfg.exact,
        quantize=cfg.quantize,
        description=f"{weights.name} ({lm_config.num_layers} layers, dim {lm_config.dim}) on {dev}, {dtype}",
    )
