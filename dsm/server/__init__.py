"""A streaming speech server (STT and TTS), wire-compatible with Kyutai's moshi-server.

`dsm serve --config FILE.toml` reads moshi-server's TOML config (`dsm.server.config`), loads each module
onto one batched model loop (`dsm.server.asr.BatchedAsr`) and serves the moshi-server WebSocket protocol
(`/api/asr-streaming`), its POST variants, OpenAI-style REST (`/v1/audio/transcriptions`), Prometheus
metrics (`/metrics`) and health (`/api/build_info`, `/health`). Needs the `server` extra (aiohttp, msgpack).
"""

from dsm.server.app import BackgroundServer, Server
from dsm.server.config import ServerConfig, load_config, parse_config

__all__ = ["BackgroundServer", "Server", "ServerConfig", "load_config", "parse_config"]
