"""moshi-server's TOML configuration, read into typed settings (server-protocol §1.3).

Top level: `static_dir`, `log_dir`, `instance_name`, `authorized_ids` and a `modules` table of named
modules, each with a `type`:

- `BatchedAsr` (streaming STT on one batched model): `path`, `batch_size`, `lm_model_file`,
  `text_tokenizer_file`, `audio_tokenizer_file`, the candle `model` table, `asr_delay_in_tokens` (or
  `conditioning_delay`), `temperature`, `dtype_override`. `PyBatchedAsr` is accepted too and reads the
  same things from its `py` table (`hf_repo`, `moshi_weight`, `mimi_weight`, `tokenizer`, `config_path`,
  `asr_delay_in_tokens`, `temp`, `device`).
- `Py` (streaming TTS): `path`, `batch_size`, `text_tokenizer_file`, `text_bos_token` and the `py` table.

String resolution: `$NAME` is replaced by the environment variable (unset: empty), then `hf://ORG/REPO/FILE`
becomes the local path of that hub file (cache first; `HF_HUB_OFFLINE` honoured). This applies to the
top-level strings, every file key, and every string in a `py` table; `hf-snapshot://ORG/REPO[/GLOB]`
is kept as is and resolved by the TTS module (`resolve_snapshot`). Unknown keys are ignored, as in the
reference. dsm's own extensions to a module are listed on `AsrModuleConfig` and `TtsModuleConfig`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsm.bundled import bundled
from dsm.errors import CheckpointError, InputError
from dsm.nn.quant import KINDS

BUNDLED = "bundled"  # as `hf_repo`: dsm's bundled English model of the module's kind (dsm.bundled)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "AsrModuleConfig",
    "ServerConfig",
    "TtsModuleConfig",
    "expand_env",
    "load_config",
    "parse_config",
    "resolve_snapshot",
    "resolve_string",
]

_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
ASR_TYPES = ("BatchedAsr", "PyBatchedAsr")
TTS_TYPES = ("Py",)
UNSUPPORTED_TYPES = ("Asr", "Tts", "PyPost", "Mimi", "Lm")
AUTO = "auto"  # openai_path not given: the first module of its kind takes the OpenAI route
OPENAI_TRANSCRIPTIONS = "/v1/audio/transcriptions"
OPENAI_SPEECH = "/v1/audio/speech"


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    """Replace each `$NAME` (`$` then an identifier) by the variable's value; unset gives ''."""
    env = os.environ if env is None else env
    return _VAR.sub(lambda m: env.get(m.group(1), ""), text)


def resolve_string(text: str, where: str) -> str:
    """`$VAR` expansion, then `hf://ORG/REPO/path` -> local path (downloaded through the hub cache)."""
    text = expand_env(text)
    if text.startswith("hf://"):
        from dsm.hub import resolve_reference

        parts = text[len("hf://") :].split("/")
        if len(parts) < 3 or not all(parts):
            raise CheckpointError(f"{where}: {text!r} must look like hf://ORG/REPO/path/in/repo")
        try:
            return str(resolve_reference(text))
        except CheckpointError as e:
            raise CheckpointError(f"{where}: {e}") from e
    return text


def resolve_snapshot(text: str, where: str) -> Path:
    """A folder: `hf-snapshot://ORG/REPO[/GLOB]` is a snapshot of the hub repo (only the files matching
    GLOB); anything else is a local directory."""
    if not text.startswith("hf-snapshot://"):
        path = Path(text).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"{where}: {text}: no such directory")
        return path
    rest = text[len("hf-snapshot://") :]
    parts = rest.split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise CheckpointError(f"{where}: {text!r} must look like hf-snapshot://ORG/REPO[/GLOB]")
    repo = f"{parts[0]}/{parts[1]}"
    patterns = [parts[2]] if len(parts) == 3 and parts[2] else None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        raise CheckpointError(f"{where}: cannot download {text} ({e})") from e


def _resolve_tree(value: Any, where: str) -> Any:
    """resolve_string on every string of nested tables and arrays (hf-snapshot:// only gets $VAR)."""
    if isinstance(value, str):
        if expand_env(value).startswith("hf-snapshot://"):
            return expand_env(value)
        return resolve_string(value, where)
    if isinstance(value, dict):
        return {k: _resolve_tree(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_tree(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


# -- typed field access -------------------------------------------------------------------------------


class _Table:
    """Typed getters over one TOML table, with errors naming the key."""

    def __init__(self, raw: dict[str, Any], where: str):
        if not isinstance(raw, dict):
            raise InputError(f"{where}: expected a table, got {type(raw).__name__}")
        self.raw = raw
        self.where = where

    def _get(self, key: str, types: tuple[type, ...], what: str, default: Any, required: bool) -> Any:
        if key not in self.raw:
            if required:
                raise InputError(f"{self.where}: missing required key '{key}'")
            return default
        value = self.raw[key]
        if isinstance(value, bool) and bool not in types:
            raise InputError(f"{self.where}.{key}: expected {what}, got a boolean")
        if not isinstance(value, types):
            raise InputError(f"{self.where}.{key}: expected {what}, got {type(value).__name__} {value!r}")
        return value

    def str(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        return self._get(key, (str,), "a string", default, required)

    def int(self, key: str, default: int | None = None, required: bool = False, minimum: int = 0):
        value = self._get(key, (int,), "an integer", default, required)
        if value is not None and value < minimum:
            raise InputError(f"{self.where}.{key}: must be >= {minimum}, got {value}")
        return value

    def float(self, key: str, default: float | None = None, required: bool = False, minimum=None):
        value = self._get(key, (int, float), "a number", default, required)
        if value is not None:
            value = float(value)
            if minimum is not None and value < minimum:
                raise InputError(f"{self.where}.{key}: must be >= {minimum}, got {value}")
        return value

    def bool(self, key: str, default: bool = False) -> bool:
        return self._get(key, (bool,), "true or false", default, False)

    def table(self, key: str) -> dict[str, Any] | None:
        return self._get(key, (dict,), "a table", None, False)

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.str(key)
        if value is not None and value not in choices:
            raise InputError(f"{self.where}.{key}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def path(self, key: str, required: bool = False) -> str | None:
        value = self.str(key, required=required)
        return None if value is None else resolve_string(value, f"{self.where}.{key}")


# -- module settings ----------------------------------------------------------------------------------


@dataclass
class AsrModuleConfig:
    """A `BatchedAsr` module.

    dsm extensions (all optional): `hf_repo` (a hub repo or local model directory: files and architecture
    from its config.json; `"bundled"`: dsm's bundled English STT), `config_file` (a Kyutai
    config.json instead of the `model` table), `device` (`auto`, `cpu`, `cuda`...), `exact` (reference
    kernels, bit-exact with offline transcription), `quantize` (one of `dsm.nn.quant.KINDS`: LM products on
    converted weights on CPU), `mimi_config` (a table of `MimiConfig` fields for
    non-standard codecs), `audio_silence_prefix_seconds` and `audio_delay_seconds` (the offline recipe of
    the REST endpoints; default: the model's `stt_config`, else 0 and `asr_delay_in_tokens / 12.5`),
    `idle_timeout_s` (120: no binary message), `max_session_s` (0: unlimited), `max_message_bytes` (16
    MiB), `max_buffered_s` (60 s of audio queued per session before the server stops reading that client),
    `post_slot_wait_s` (100: how long a POST waits for a free slot), `openai_path` (default:
    `/v1/audio/transcriptions` for the first ASR module; "" disables it).
    """

    name: str
    path: str
    batch_size: int
    asr_delay_in_tokens: int
    lm_model_file: str | None = None
    text_tokenizer_file: str | None = None
    audio_tokenizer_file: str | None = None
    model: dict[str, Any] | None = None
    temperature: float = 0.0
    dtype_override: str | None = None
    hf_repo: str | None = None
    config_file: str | None = None
    device: str = "auto"
    exact: bool = False
    quantize: str | None = None
    mimi_config: dict[str, Any] | None = None
    audio_silence_prefix_seconds: float | None = None
    audio_delay_seconds: float | None = None
    idle_timeout_s: float = 120.0
    max_session_s: float = 0.0
    max_message_bytes: int = 16 * 1024 * 1024
    max_buffered_s: float = 60.0
    post_slot_wait_s: float = 100.0
    openai_path: str | None = None
    type: str = "BatchedAsr"

    @classmethod
    def parse(cls, name: str, raw: dict[str, Any]) -> AsrModuleConfig:
        where = f"modules.{name}"
        t = _Table(raw, where)
        kind = t.str("type", required=True)
        if kind == "PyBatchedAsr":
            return cls._parse_py(name, t)
        delay = t.int("asr_delay_in_tokens", required="conditioning_delay" not in raw)
        cond_delay = t.float("conditioning_delay", minimum=0.0)
        if cond_delay is not None:  # overrides, as the reference does
            delay = int(cond_delay * 12.5) + 1
        cfg = cls(
            name=name,
            path=_route(t, "/api/asr-streaming"),
            batch_size=t.int("batch_size", required=True, minimum=1),
            asr_delay_in_tokens=delay,
            lm_model_file=t.path("lm_model_file"),
            text_tokenizer_file=t.path("text_tokenizer_file"),
            audio_tokenizer_file=t.path("audio_tokenizer_file"),
            model=t.table("model"),
            temperature=t.float("temperature", 0.0),
            dtype_override=t.str("dtype_override"),
            hf_repo=_opt_expand(t.str("hf_repo")),
            config_file=t.path("config_file"),
            type=kind,
        )
        cfg._extensions(t)
        if cfg.hf_repo == BUNDLED:
            cfg.hf_repo = str(bundled("stt"))
        if cfg.hf_repo is None:
            missing = [
                k
                for k in ("lm_model_file", "text_tokenizer_file", "audio_tokenizer_file")
                if not getattr(cfg, k)
            ]
            if missing:
                raise InputError(f"{where}: missing {', '.join(missing)} (or give hf_repo)")
            if cfg.model is None and cfg.config_file is None:
                raise InputError(f"{where}: missing the [model] table (or give config_file / hf_repo)")
        return cfg

    @classmethod
    def _parse_py(cls, name: str, t: _Table) -> AsrModuleConfig:
        py = _Table(_resolve_tree(t.table("py") or {}, f"{t.where}.py"), f"{t.where}.py")
        cfg = cls(
            name=name,
            path=_route(t, "/api/asr-streaming"),
            batch_size=t.int("batch_size", required=True, minimum=1),
            asr_delay_in_tokens=t.int("asr_delay_in_tokens", py.int("asr_delay_in_tokens", 32)),
            lm_model_file=py.str("moshi_weight"),
            text_tokenizer_file=t.path("text_tokenizer_file") or py.str("tokenizer"),
            audio_tokenizer_file=py.str("mimi_weight"),
            temperature=py.float("temp", 0.0),
            hf_repo=py.str("hf_repo", required=True),
            config_file=py.str("config_path"),
            device=py.str("device", "auto"),
            type="PyBatchedAsr",
        )
        cfg._extensions(t)
        return cfg

    def _extensions(self, t: _Table) -> None:
        self.device = _opt_expand(t.str("device")) or self.device
        self.exact = t.bool("exact", False)
        self.quantize = t.choice("quantize", KINDS)
        self.mimi_config = t.table("mimi_config")
        self.audio_silence_prefix_seconds = t.float("audio_silence_prefix_seconds", minimum=0.0)
        self.audio_delay_seconds = t.float("audio_delay_seconds", minimum=0.0)
        self.idle_timeout_s = t.float("idle_timeout_s", 120.0, minimum=0.0)
        self.max_session_s = t.float("max_session_s", 0.0, minimum=0.0)
        self.max_message_bytes = t.int("max_message_bytes", 16 * 1024 * 1024, minimum=1024)
        self.max_buffered_s = t.float("max_buffered_s", 60.0, minimum=0.1)
        self.post_slot_wait_s = t.float("post_slot_wait_s", 100.0, minimum=0.0)
        self.openai_path = _openai_path(t)


@dataclass
class TtsModuleConfig:
    """A `Py` (TTS) module: `path`, `batch_size`, `text_tokenizer_file`, `text_bos_token` and the `py` table
    (tts.py's `Config`: `hf_repo` (`"bundled"`: dsm's bundled English TTS),
    `voice_folder`, `default_voice`, `cfg_coef`, `n_q`, `temp`, padding settings...; unset sampling
    options take the model config's `generation` table). dsm extensions: `py.soft_decode`, `device`,
    `openai_path` (default: `/v1/audio/speech` for the first TTS module; "" disables it),
    `idle_timeout_s` (30: no message while the session waits for text), `max_session_s` (0: unlimited),
    `max_message_bytes`, `post_slot_wait_s` (100), `exact`, `quantize`, `dtype_override` (`bf16` default,
    `f32`), `mimi_config` (as for `BatchedAsr`)."""

    name: str
    path: str
    batch_size: int
    text_tokenizer_file: str | None
    text_bos_token: int
    py: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    openai_path: str | None = None
    idle_timeout_s: float = 30.0
    max_session_s: float = 0.0
    max_message_bytes: int = 16 * 1024 * 1024
    post_slot_wait_s: float = 100.0
    exact: bool = False
    quantize: str | None = None
    dtype_override: str | None = None
    mimi_config: dict[str, Any] | None = None
    type: str = "Py"

    @classmethod
    def parse(cls, name: str, raw: dict[str, Any]) -> TtsModuleConfig:
        where = f"modules.{name}"
        t = _Table(raw, where)
        cfg = cls(
            name=name,
            path=_route(t, "/api/tts_streaming"),
            batch_size=t.int("batch_size", required=True, minimum=1),
            text_tokenizer_file=t.path("text_tokenizer_file"),
            text_bos_token=t.int("text_bos_token", 1),
            py=_resolve_tree(t.table("py") or {}, f"{where}.py"),
            device=_opt_expand(t.str("device")) or "auto",
            idle_timeout_s=t.float("idle_timeout_s", 30.0, minimum=0.0),
            max_session_s=t.float("max_session_s", 0.0, minimum=0.0),
            max_message_bytes=t.int("max_message_bytes", 16 * 1024 * 1024, minimum=1024),
            post_slot_wait_s=t.float("post_slot_wait_s", 100.0, minimum=0.0),
            exact=t.bool("exact", False),
            quantize=t.choice("quantize", KINDS),
            dtype_override=t.str("dtype_override"),
            mimi_config=t.table("mimi_config"),
        )
        cfg.openai_path = _openai_path(t)
        if cfg.py.get("hf_repo") == BUNDLED:
            cfg.py["hf_repo"] = str(bundled("tts"))
        return cfg


def _route(t: _Table, default: str) -> str:
    path = t.str("path", default)
    if not path.startswith("/"):
        raise InputError(f"{t.where}.path: must start with '/', got {path!r}")
    return path


def _openai_path(t: _Table) -> str | None:
    """The module's `openai_path`: AUTO when absent, None when "" (disabled)."""
    path = t.str("openai_path", AUTO)
    if path and path != AUTO and not path.startswith("/"):
        raise InputError(f"{t.where}.openai_path: must start with '/', got {path!r}")
    return path or None


def _opt_expand(value: str | None) -> str | None:
    return None if value is None else expand_env(value)


# -- the whole file -----------------------------------------------------------------------------------


@dataclass
class ServerConfig:
    """A parsed server config: global settings and the modules, in file order."""

    authorized_ids: frozenset[str]
    static_dir: str | None = None
    log_dir: str | None = None
    instance_name: str = "dsm"
    asr: list[AsrModuleConfig] = field(default_factory=list)
    tts: list[TtsModuleConfig] = field(default_factory=list)
    source: str = "<config>"

    @property
    def modules(self) -> list[AsrModuleConfig | TtsModuleConfig]:
        return [*self.asr, *self.tts]


def parse_config(raw: dict[str, Any], source: str = "<config>") -> ServerConfig:
    """Settings from a TOML document already parsed into a dict (see the module docstring)."""
    t = _Table(raw, source)
    ids = t._get("authorized_ids", (list,), "an array of strings", None, True)
    if not all(isinstance(i, str) for i in ids):
        raise InputError(f"{source}: authorized_ids must be an array of strings")
    static_dir = t.str("static_dir")
    log_dir = t.str("log_dir")
    cfg = ServerConfig(
        authorized_ids=frozenset(ids),
        static_dir=None if static_dir is None else resolve_string(static_dir, f"{source}: static_dir"),
        log_dir=None if log_dir is None else resolve_string(log_dir, f"{source}: log_dir"),
        instance_name=resolve_string(t.str("instance_name", "dsm"), f"{source}: instance_name"),
        source=source,
    )
    modules = t.table("modules") or {}
    for name, body in modules.items():
        mt = _Table(body, f"modules.{name}")
        kind = mt.str("type", required=True)
        if kind in ASR_TYPES:
            cfg.asr.append(AsrModuleConfig.parse(name, body))
        elif kind in TTS_TYPES:
            cfg.tts.append(TtsModuleConfig.parse(name, body))
        elif kind in UNSUPPORTED_TYPES:
            raise InputError(
                f"modules.{name}: type {kind!r} is not supported by dsm (use BatchedAsr for STT, Py for TTS)"
            )
        else:
            raise InputError(f"modules.{name}: unknown module type {kind!r}")
    for modules_of_kind, default in ((cfg.asr, OPENAI_TRANSCRIPTIONS), (cfg.tts, OPENAI_SPEECH)):
        taken = any(m.openai_path == default for m in modules_of_kind)
        for module in modules_of_kind:
            if module.openai_path == AUTO:
                module.openai_path = None if taken else default
                taken = True
    routes: dict[str, str] = {}
    for module in cfg.modules:
        for route in (module.path, module.openai_path):
            if route is None:
                continue
            if route in routes:
                raise InputError(f"modules.{module.name}: route {route} is already used by {routes[route]}")
            routes[route] = f"modules.{module.name}"
    return cfg


def load_config(path: str | Path) -> ServerConfig:
    """Read and parse a moshi-server TOML config file (hub files are fetched here)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise InputError(f"{path}: config file not found") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from e
    return parse_config(raw, str(path))
