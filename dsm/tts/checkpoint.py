"""Finding the files of a DSM text-to-speech checkpoint (e.g. `kyutai/tts-1.6b-en_fr`).

The same flags as speech-to-text (`--hf-repo --moshi-weight --mimi-weight --tokenizer --config-path`,
see `dsm.stt.checkpoint`), plus what TTS reads from the config: `tts_config` (audio delay, second
stream lookahead, speaker count) and `model_id`, which names the voice embedding files of this model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm.bundled import ROOT as BUNDLED_ROOT
from dsm.bundled import bundled
from dsm.errors import CheckpointError
from dsm.hub import resolve_reference
from dsm.lm.config import LMConfig
from dsm.stt.checkpoint import SttCheckpoint
from dsm.tts.script import FRAME_RATE
from dsm.tts.voices import DEFAULT_VOICE_REPO, voice_suffix

DEFAULT_TTS_REPO = "kyutai/tts-1.6b-en_fr"
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"  # in kyutai/tts-voices
# The `Synthesizer` options a config's ``generation`` table (a dsm extension) may set, with their types:
# the settings a model is best sampled with (dsm's bundled TTS: greedy, soft decoding).
GENERATION_OPTIONS: dict[str, type] = {
    "temperature": float,
    "cfg_coef": float,
    "top_k": int,
    "n_q": int,
    "padding_bonus": float,
    "soft_decode": bool,
}


def check_generation(raw: Any, where: str) -> dict[str, Any]:
    """A config's ``generation`` table checked against `GENERATION_OPTIONS` (CheckpointError naming
    ``where`` and the key otherwise), its values converted to the options' types."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: generation must be a table, got {raw!r}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        kind = GENERATION_OPTIONS.get(key)
        at = f"{where}: generation.{key}"
        if kind is None:
            raise CheckpointError(f"{at}: unknown option (known: {', '.join(GENERATION_OPTIONS)})")
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if (kind is bool and not isinstance(value, bool)) or (kind is not bool and not numeric):
            raise CheckpointError(f"{at} must be a {kind.__name__}, got {value!r}")
        if kind is int and value != int(value):
            raise CheckpointError(f"{at} must be an int, got {value!r}")
        out[key] = kind(value)
    return out


@dataclass(frozen=True)
class TtsConfig:
    """The `tts_config` section of a Kyutai TTS config.json."""

    audio_delay: float = 1.28  # seconds between a text token and the audio it produces
    second_stream_ahead: int = 0  # words of lookahead on the second text stream
    max_speakers: int = 5  # voice slots of the cross-attention condition
    multistream: bool = False
    # dsm extension: voices are the codec latent of this many seconds of a clip (dsm's TTS recipe), so
    # `dsm voice` can make new ones; None for Kyutai's models (an unreleased speaker encoder)
    voice_seconds: float | None = None

    @property
    def delay_steps(self) -> int:
        return int(self.audio_delay * FRAME_RATE)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> TtsConfig:
        raw = raw or {}
        try:
            out = cls(
                audio_delay=float(raw.get("audio_delay", 1.28)),
                second_stream_ahead=int(raw.get("second_stream_ahead", 0)),
                max_speakers=int(raw.get("max_speakers", 5)),
                multistream=bool(raw.get("multistream", False)),
                voice_seconds=None if raw.get("voice_seconds") is None else float(raw["voice_seconds"]),
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"config: invalid tts_config {raw!r} ({e})") from e
        if (
            out.audio_delay < 0
            or out.second_stream_ahead < 0
            or out.max_speakers < 1
            or (out.voice_seconds is not None and out.voice_seconds <= 0)
        ):
            raise CheckpointError(f"config: invalid tts_config {raw!r}")
        if out.multistream:
            raise CheckpointError("config: multistream TTS models are not supported")
        return out


@dataclass(frozen=True)
class TtsCheckpoint(SttCheckpoint):
    """Resolved local paths of a TTS checkpoint, plus its parsed config (the files as for STT)."""

    @property
    def lm_config(self) -> LMConfig:
        cfg = super().lm_config
        if cfg.dep_q == 0:
            raise CheckpointError(f"{self.config_path}: not a TTS model (it generates no audio, dep_q = 0)")
        return cfg

    @property
    def tts_config(self) -> TtsConfig:
        try:
            return TtsConfig.from_dict(self.raw_config.get("tts_config"))
        except CheckpointError as e:
            raise CheckpointError(f"{self.config_path}: {e}") from e

    @property
    def voice_suffix(self) -> str:
        return voice_suffix(self.raw_config)

    @property
    def voice_repo(self) -> str:
        """The config's ``voice_repo`` (a dsm extension: a directory beside config.json, or a hub repo),
        else Kyutai's voices repo."""
        name = self.raw_config.get("voice_repo")
        if not name:
            return DEFAULT_VOICE_REPO
        local = self.config_path.parent / str(name)
        return str(local) if local.is_dir() else str(name)

    @property
    def default_voice(self) -> str:
        """The config's ``default_voice`` (a dsm extension), else dsm's default Kyutai voice."""
        return str(self.raw_config.get("default_voice") or DEFAULT_VOICE)

    @property
    def is_bundled(self) -> bool:
        """Whether this is dsm's bundled TTS (`dsm.bundled`): small, so float32 on CPU by default."""
        return self.config_path.resolve().parent == (BUNDLED_ROOT / "tts").resolve()

    @property
    def generation(self) -> dict[str, Any]:
        """The config's ``generation`` table (a dsm extension): the `Synthesizer` options this model is
        best run with, used where the caller sets none; empty for Kyutai's models."""
        return check_generation(self.raw_config.get("generation") or {}, str(self.config_path))

    @classmethod
    def resolve(
        cls,
        hf_repo: str | Path | None = None,
        *,
        moshi_weight: str | Path | None = None,
        mimi_weight: str | Path | None = None,
        tokenizer: str | Path | None = None,
        config_path: str | Path | None = None,
    ) -> TtsCheckpoint:
        """Resolve every file; a missing one raises `CheckpointError` naming it and how to get it. With
        nothing named at all: dsm's bundled English TTS model."""
        if hf_repo is None and not (moshi_weight or mimi_weight or tokenizer or config_path):
            hf_repo = bundled("tts")
        if config_path is None:
            if hf_repo is None:
                raise CheckpointError(
                    f"no TTS config: pass a hub repo or model directory (e.g. --hf-repo {DEFAULT_TTS_REPO}) "
                    "or the path of its config.json (--config-path)"
                )
            config_path = resolve_reference("config.json", str(hf_repo))
        files = SttCheckpoint.resolve(
            hf_repo,
            moshi_weight=moshi_weight,
            mimi_weight=mimi_weight,
            tokenizer=tokenizer,
            config_path=config_path,
        )
        raw = files.raw_config
        if raw.get("model_type") not in (None, "tts"):
            raise CheckpointError(f"{files.config_path}: a {raw['model_type']!r} model, not a TTS model")
        return cls(files.moshi_weight, files.mimi_weight, files.tokenizer, files.config_path, raw)
