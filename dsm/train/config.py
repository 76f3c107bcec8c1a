"""Training configuration: TOML files mapped onto dataclasses (one table per dataclass).

A config has ``[run]``, ``[optim]`` and ``[data]``, plus ``[model]`` and ``[stt]`` / ``[tts]`` (with an
optional ``[lora]``) for the LM trainers, or ``[codec]`` for the codec trainer. Relative paths are taken
from the config file's directory. Unknown keys and wrong types are errors naming the table and key.
See ``configs/train/*.toml`` for complete examples.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsm.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class RunConfig:
    """Where and how long to run."""

    out_dir: str = "runs/train"
    seed: int = 0
    device: str = "cpu"
    precision: str = "bf16"  # bf16 (autocast, fp32 master weights) | fp32
    max_steps: int = 1000
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    save_every: int = 100
    distributed: str = "ddp"  # when launched by torchrun with WORLD_SIZE > 1: ddp | fsdp
    num_threads: int = 0  # torch CPU threads (0: torch's default)
    progress: bool = True
    plot: bool = True


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 4e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    grad_clip: float = 1.0


@dataclass
class DataConfig:
    """Aligned-data manifests (see dsm.train.data.manifest) and the codes cache."""

    train: str = ""
    eval: str = ""  # a held-out manifest; empty: the train manifest's items with split == eval_split
    eval_split: str = ""
    train_split: str = ""  # if set, only train-manifest items with this split tag are trained on
    max_seconds: float = 30.0  # longer items are skipped (with a log line)
    max_eval_items: int = 256
    cache_dir: str = ""  # default: <out_dir>/codes_cache


@dataclass
class ModelConfig:
    """The LM to train: a Kyutai-format checkpoint to fine-tune (``init``: hub repo or directory, or the
    explicit files), or a new model from ``arch`` (Kyutai config.json keys) trained from scratch."""

    init: str = ""
    moshi_weight: str = ""
    config_path: str = ""
    tokenizer: str = ""
    mimi_weight: str = ""
    mimi_config: dict[str, Any] = field(default_factory=dict)  # MimiConfig fields (+ "seanet" table)
    arch: dict[str, Any] = field(default_factory=dict)
    export_dtype: str = "bfloat16"
    # from scratch: start the audio code embeddings from the codec's code vectors (what each code adds to
    # its latent), so the summed input embedding is the codec's latent instead of random noise
    codec_embeddings: bool = False


@dataclass
class SttTrainConfig:
    """STT streams: the text delay (default: the checkpoint's stt_config, else 0.5 s) and padding weight."""

    delay_seconds: float | None = None
    pad_weight: float = 0.5
    # probability that a training input audio code is replaced by a uniformly random one (regularises a
    # small model against memorising the exact codes of its utterances; 0 = off)
    code_noise: float = 0.0


@dataclass
class TtsTrainConfig:
    """TTS streams and voice conditioning (defaults from the checkpoint's tts_config where it has one)."""

    audio_delay: float | None = None  # seconds the audio follows the text (1.28 for tts-1.6b)
    second_stream_ahead: int | None = None
    pad_weight: float = 0.5
    first_codebook_weight: float = 100.0
    # probability of an item being CFG's null branch: every condition and the text dropped
    condition_dropout: float = 0.0
    # probability that an audio code of the history the temporal transformer reads is replaced by a random
    # one (the targets stay): the model has to lean on the text rather than continue the audio (0 = off)
    code_noise: float = 0.0
    voice_seconds: float = 10.0
    voice_mimi: str = ""  # Mimi weights for voice latents (default: the codes' Mimi)
    # voice clips of a speaker come from its first N training utterances (0 = all): bounds the voice latents
    # to encode when a corpus has thousands of utterances per speaker
    voice_pool: int = 0
    max_speakers: int | None = None
    text_conditions: dict[str, str] = field(default_factory=dict)  # e.g. {control = "ok"}


@dataclass
class LoraConfig:
    """LoRA adapters on the LM's linear layers (merged into the weights on export)."""

    enabled: bool = False
    rank: int = 16
    scaling: float = 2.0
    targets: list[str] = field(default_factory=lambda: ["transformer."])  # parameter-name prefixes
    train_also: list[str] = field(default_factory=list)  # prefixes trained fully next to the adapters


@dataclass
class CodecTrainConfig:
    """A Mimi-architecture codec (``arch``: MimiConfig fields, with a ``seanet`` table) and its losses."""

    arch: dict[str, Any] = field(default_factory=dict)
    init: str = ""  # Mimi weights to start from
    segment_seconds: float = 1.0
    mel_weight: float = 1.0
    waveform_weight: float = 0.1
    commitment_weight: float = 1.0
    adversarial_weight: float = 0.0  # > 0 trains a multi-scale STFT discriminator too
    feature_weight: float = 2.0
    disc_lr: float = 3e-4
    disc_scales: list[int] = field(
        default_factory=lambda: [256, 512, 1024]
    )  # STFT sizes of the discriminator
    disc_channels: int = 32
    ema_decay: float = 0.99
    quantizer_dropout: bool = True
    mel_bins: int = 64
    mel_scales: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048])
    mel_floor_db: float | None = None  # log-mel floor as a white-noise level in dBFS (None: 1e-5)
    # train only the decoder side (upsample, decoder transformer, SEANet decoder) of the ``init`` codec:
    # its codes stay exactly as they were, so models trained on them keep working with the better decoder;
    # an architecture with more codebooks (``arch.n_q``) than the init learns the new ones after its own
    decoder_only: bool = False
    # with decoder_only: each code of a training crop is, with probability ``code_noise``, replaced by one of
    # its ``code_noise_neighbours`` nearest other codewords (in the decoded latent, at the start of training),
    # so that the decoder tolerates near misses such as a TTS model's drawn codes
    code_noise: float = 0.0
    code_noise_neighbours: int = 32
    # with decoder_only: codes drawn by a TTS model for the training audio (`TtsTask.draw_audio_codes`; a
    # safetensors file of [K, frames] int codes keyed by resolved audio path, -1 where none). A batch is,
    # with probability ``substitute_prob``, decoded from its first K codebooks only, those codes put in place
    # of the true ones: the decoder learns to make the true audio from what the TTS model draws. Or (float
    # [codebook_dim, frames] tensors, NaN where none, metadata ``n_q`` = K) the model's expected acoustic
    # codewords (`TtsTask.expected_acoustic_codewords`), what soft decoding hands the decoder: they replace
    # the sum of the true codewords of codebooks 1 .. K - 1
    substitute_codes: str = ""
    substitute_prob: float = 0.5
    # semantic distillation of the first codebook (`dsm.train.teacher`): a linear head maps its quantized
    # output to the teacher's features of the same 80 ms frame, loss = weight x (1 - cosine similarity)
    distill_features: str = ""  # safetensors of `dsm data teacher` for the training manifest
    distill_weight: float = 0.0


@dataclass
class TrainConfig:
    kind: str
    run: RunConfig
    optim: OptimConfig
    data: DataConfig
    model: ModelConfig
    stt: SttTrainConfig
    tts: TtsTrainConfig
    lora: LoraConfig
    codec: CodecTrainConfig
    base_dir: Path
    source: str = "<config>"

    def path(self, value: str) -> Path:
        """A config path, relative to the config file's directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def out_dir(self) -> Path:
        return self.path(self.run.out_dir)


_SECTIONS = {
    "run": RunConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "stt": SttTrainConfig,
    "tts": TtsTrainConfig,
    "lora": LoraConfig,
    "codec": CodecTrainConfig,
}
KINDS = ("codec", "stt", "tts")


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except InputError:
                pass
        raise InputError(f"{where}: unexpected value {value!r}")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
            return value
        raise InputError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a table, got {value!r}")
        return value
    return value


def _section(cls: type, table: dict[str, Any], where: str) -> Any:
    if not isinstance(table, dict):
        raise InputError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise InputError(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return cls(**{k: _check_type(v, hints[k], f"{where}.{k}") for k, v in table.items()})


def parse_config(raw: dict[str, Any], kind: str, base_dir: Path, source: str = "<config>") -> TrainConfig:
    """Build a `TrainConfig` for trainer ``kind`` from a parsed TOML document."""
    if kind not in KINDS:
        raise InputError(f"unknown trainer {kind!r} (expected one of {', '.join(KINDS)})")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise InputError(f"{source}: unknown tables {', '.join(unknown)} (known: {', '.join(_SECTIONS)})")
    sections = {
        name: _section(cls, raw.get(name, {}), f"{source}: [{name}]") for name, cls in _SECTIONS.items()
    }
    cfg = TrainConfig(kind=kind, base_dir=base_dir, source=source, **sections)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    src = cfg.source
    checks = [
        (cfg.run.precision in ("bf16", "fp32"), "[run].precision must be 'bf16' or 'fp32'"),
        (cfg.run.distributed in ("ddp", "fsdp"), "[run].distributed must be 'ddp' or 'fsdp'"),
        (cfg.run.max_steps >= 1, "[run].max_steps must be >= 1"),
        (cfg.run.log_every >= 1 and cfg.run.save_every >= 1, "[run].log_every and save_every must be >= 1"),
        (cfg.run.eval_every >= 0, "[run].eval_every must be >= 0"),
        (cfg.optim.lr > 0, "[optim].lr must be > 0"),
        (cfg.optim.batch_size >= 1 and cfg.optim.grad_accum >= 1, "[optim] batch_size, grad_accum >= 1"),
        (len(cfg.optim.betas) == 2, "[optim].betas must hold two numbers"),
        (cfg.optim.warmup_steps >= 0, "[optim].warmup_steps must be >= 0"),
        (0 <= cfg.tts.condition_dropout <= 1, "[tts].condition_dropout must lie in [0, 1]"),
        (0 <= cfg.stt.code_noise < 1, "[stt].code_noise must lie in [0, 1)"),
        (0 <= cfg.tts.code_noise < 1, "[tts].code_noise must lie in [0, 1)"),
        (cfg.tts.voice_pool >= 0, "[tts].voice_pool must be >= 0"),
        (0 <= cfg.codec.substitute_prob <= 1, "[codec].substitute_prob must lie in [0, 1]"),
        (cfg.lora.rank >= 1, "[lora].rank must be >= 1"),
        (cfg.model.export_dtype in ("bfloat16", "float32"), "[model].export_dtype: bfloat16 or float32"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(f"{src}: {message}")
    if not cfg.data.train:
        raise InputError(f"{src}: [data].train must name a manifest")
    if cfg.kind != "codec" and not (cfg.model.init or cfg.model.config_path or cfg.model.arch):
        raise InputError(
            f"{src}: [model] needs `init` (a checkpoint to fine-tune), `config_path` or an [model.arch] table"
        )


def load_config(path: str | Path, kind: str) -> TrainConfig:
    """Read a TOML training config for trainer ``kind`` (codec, stt or tts)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise InputError(f"{path}: config file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from e
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from e
    return parse_config(raw, kind, path.resolve().parent, str(path))
