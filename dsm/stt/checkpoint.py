"""Finding the files of a DSM speech-to-text checkpoint.

Mirrors Kyutai's `--hf-repo --moshi-weight --mimi-weight --tokenizer --config-path` flags
(`CheckpointInfo.from_hf_repo`): the repo's `config.json` names the LM weights (`moshi_name`, default
`model.safetensors`), the Mimi weights (`mimi_name`) and the SentencePiece tokenizer (`tokenizer_name`);
each explicit file overrides the repo's. A repo is a hub id (the local cache is used first, and
`HF_HUB_OFFLINE=1` is honoured) or a local directory laid out like one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsm.bundled import bundled
from dsm.codec import MimiConfig
from dsm.errors import CheckpointError, InputError
from dsm.hub import MIMI_FILENAMES, first_found, resolve_reference
from dsm.lm.config import LMConfig

DEFAULT_MOSHI_NAME = "model.safetensors"
# The DSM scripts' defaults when a config has no stt_config (model-spec §4.2).
DEFAULT_PREFIX_SECONDS = 1.0
DEFAULT_DELAY_SECONDS = 5.0


@dataclass(frozen=True)
class SttConfig:
    """The `stt_config` section of a Kyutai config.json."""

    audio_delay_seconds: float = DEFAULT_DELAY_SECONDS
    audio_silence_prefix_seconds: float = DEFAULT_PREFIX_SECONDS

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> SttConfig:
        raw = raw or {}
        try:
            return cls(
                audio_delay_seconds=float(raw.get("audio_delay_seconds", DEFAULT_DELAY_SECONDS)),
                audio_silence_prefix_seconds=float(
                    raw.get("audio_silence_prefix_seconds", DEFAULT_PREFIX_SECONDS)
                ),
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"config: invalid stt_config {raw!r} ({e})") from e


@dataclass(frozen=True)
class SttCheckpoint:
    """Resolved local paths of an STT checkpoint, plus its parsed config."""

    moshi_weight: Path
    mimi_weight: Path
    tokenizer: Path
    config_path: Path
    raw_config: dict[str, Any] = field(repr=False)

    @property
    def lm_config(self) -> LMConfig:
        try:
            return LMConfig.from_kyutai(self.raw_config)
        except CheckpointError as e:
            raise CheckpointError(f"{self.config_path}: {e}") from e

    @property
    def stt_config(self) -> SttConfig:
        return SttConfig.from_dict(self.raw_config.get("stt_config"))

    @property
    def mimi_config(self) -> MimiConfig | None:
        """The codec architecture from config.json's ``mimi_config`` (dsm's models trained on a smaller
        codec write it), or None for Kyutai's Mimi."""
        raw = self.raw_config.get("mimi_config")
        if raw is None:
            return None
        try:
            return MimiConfig.from_dict(raw)
        except InputError as e:
            raise CheckpointError(f"{self.config_path}: mimi_config: {e}") from e

    @property
    def lm_gen_config(self) -> dict[str, Any]:
        return dict(self.raw_config.get("lm_gen_config") or {})

    @classmethod
    def resolve(
        cls,
        hf_repo: str | Path | None = None,
        *,
        moshi_weight: str | Path | None = None,
        mimi_weight: str | Path | None = None,
        tokenizer: str | Path | None = None,
        config_path: str | Path | None = None,
    ) -> SttCheckpoint:
        """Resolve every file; a missing one raises `CheckpointError` naming it and how to get it. With
        nothing named at all: dsm's bundled English STT model."""
        if hf_repo is None and not (moshi_weight or mimi_weight or tokenizer or config_path):
            hf_repo = bundled("stt")
        repo = None if hf_repo is None else str(hf_repo)
        if config_path is not None:
            config_file = resolve_reference(config_path)
        elif repo is not None:
            config_file = resolve_reference("config.json", repo)
        else:
            raise CheckpointError(
                "no STT config: pass a hub repo or model directory (e.g. --hf-repo kyutai/stt-1b-en_fr) "
                "or the path of its config.json (--config-path)"
            )
        raw = _read_json(config_file)

        def pick(explicit: str | Path | None, names: list[str], what: str, flag: str) -> Path:
            if explicit is not None:
                return resolve_reference(explicit)
            if repo is None:
                raise CheckpointError(
                    f"no {what} file: pass {flag} or a hub repo / model directory holding {names[0]}"
                )
            return first_found(names, repo)

        mimi_names = [raw["mimi_name"]] if raw.get("mimi_name") else list(MIMI_FILENAMES)
        tok_name = raw.get("tokenizer_name")
        if tokenizer is None and repo is not None and not tok_name:
            raise CheckpointError(f"{config_file}: config has no 'tokenizer_name'; pass --tokenizer")
        return cls(
            moshi_weight=pick(
                moshi_weight,
                [raw.get("moshi_name") or DEFAULT_MOSHI_NAME],
                "language model",
                "--moshi-weight",
            ),
            mimi_weight=pick(mimi_weight, mimi_names, "Mimi codec", "--mimi-weight"),
            tokenizer=pick(tokenizer, [tok_name or "tokenizer.model"], "text tokenizer", "--tokenizer"),
            config_path=config_file,
            raw_config=raw,
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: config file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid JSON config ({e})") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def load_tokenizer(path: str | Path) -> Any:
    """A `sentencepiece.SentencePieceProcessor` for `path`, with a `CheckpointError` if unreadable."""
    import sentencepiece

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: tokenizer file not found")
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable SentencePiece model ({e})") from e
