"""moshi-server's WebSocket messages: one msgpack map per binary frame, `"type"` first (server-protocol §3.2).

Server messages are packed with `"type"` first and the fields in the documented order; float64 for times
(`start_time`, `stop_time`, `start_s`, `stop_s`), float32 for sample and probability arrays (`pcm`,
`prs`), byte arrays (`OggOpus.data`) as arrays of small ints. Client messages are validated strictly
enough that a malformed one becomes a `ProtocolError` naming the problem (extra keys are ignored; key
order does not matter; `pcm` accepts ints and floats; `OggOpus.data` accepts bin or an int array).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

__all__ = [
    "AudioIn",
    "EosIn",
    "InitIn",
    "MarkerIn",
    "OggOpusIn",
    "ProtocolError",
    "TextIn",
    "VoiceIn",
    "error",
    "pack",
    "parse_client_message",
]

_F32_FIELDS = frozenset({"pcm", "prs", "embeddings"})
_P64 = msgpack.Packer(use_single_float=False, use_bin_type=True)
_P32 = msgpack.Packer(use_single_float=True, use_bin_type=True)


class ProtocolError(Exception):
    """A client message that cannot be accepted; the text is sent back in an `Error` message."""


def pack(msg_type: str, **fields: Any) -> bytes:
    """One server message: a msgpack map with `type` first, then `fields` in the order given."""
    out = [_P64.pack_map_header(1 + len(fields)), _P64.pack("type"), _P64.pack(msg_type)]
    for key, value in fields.items():
        out.append(_P64.pack(key))
        if key in _F32_FIELDS:
            out.append(_P32.pack([float(v) for v in value]))
        elif isinstance(value, bytes | bytearray):
            out.append(_P64.pack(list(value)))  # Vec<u8>: an array of ints, as the reference
        else:
            out.append(_P64.pack(value))
    return b"".join(out)


def error(message: str) -> bytes:
    return pack("Error", message=message)


# -- client messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioIn:
    pcm: np.ndarray  # float32 [N]


@dataclass(frozen=True)
class MarkerIn:
    id: int


@dataclass(frozen=True)
class OggOpusIn:
    data: bytes


@dataclass(frozen=True)
class InitIn:
    pass


@dataclass(frozen=True)
class TextIn:
    text: str


@dataclass(frozen=True)
class EosIn:
    pass


@dataclass(frozen=True)
class VoiceIn:
    embeddings: np.ndarray  # float32, reshaped to `shape`


ClientMessage = AudioIn | MarkerIn | OggOpusIn | InitIn | TextIn | EosIn | VoiceIn
STT_TYPES = ("Audio", "Marker", "OggOpus", "Init")
TTS_TYPES = ("Text", "Eos", "Voice")


def _field(msg: dict, key: str, kind: str) -> Any:
    if key not in msg:
        raise ProtocolError(f"{kind} message without '{key}'")
    return msg[key]


def _pcm(value: Any) -> np.ndarray:
    if not isinstance(value, list):
        raise ProtocolError(f"Audio.pcm must be an array of numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):
        raise ProtocolError("Audio.pcm must be an array of numbers") from None
    if (arr.size and arr.dtype.kind not in "iuf") or arr.ndim != 1:
        raise ProtocolError("Audio.pcm must be an array of numbers")
    with np.errstate(over="ignore"):  # out-of-range values become inf, rejected below
        pcm = arr.astype(np.float32)
    if not np.isfinite(pcm).all():
        raise ProtocolError("Audio.pcm contains non-finite samples (NaN or inf)")
    return pcm


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if not all(0 <= v < 256 for v in value):
            raise ProtocolError("OggOpus.data must hold bytes (ints 0..255)")
        return bytes(value)
    raise ProtocolError(f"OggOpus.data must be bytes or an array of ints, got {type(value).__name__}")


def parse_client_message(data: bytes, allowed: tuple[str, ...]) -> ClientMessage:
    """Decode one binary frame from a client; `allowed` lists the message types of this endpoint."""
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
        raise ProtocolError(f"message is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"message must be a msgpack map, got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 'type'")
    if kind not in allowed:
        raise ProtocolError(f"unknown message type {kind!r} (expected one of {', '.join(allowed)})")
    if kind == "Audio":
        return AudioIn(_pcm(_field(msg, "pcm", kind)))
    if kind == "Marker":
        marker = _field(msg, "id", kind)
        if not isinstance(marker, int) or isinstance(marker, bool) or not -(2**63) <= marker < 2**63:
            raise ProtocolError("Marker.id must be a 64-bit integer")
        return MarkerIn(marker)
    if kind == "OggOpus":
        return OggOpusIn(_bytes(_field(msg, "data", kind)))
    if kind == "Init":
        return InitIn()
    if kind == "Text":
        text = _field(msg, "text", kind)
        if not isinstance(text, str):
            raise ProtocolError(f"Text.text must be a string, got {type(text).__name__}")
        return TextIn(text)
    if kind == "Eos":
        return EosIn()
    if kind == "Voice":
        values = _field(msg, "embeddings", kind)
        shape = _field(msg, "shape", kind)
        if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
            raise ProtocolError("Voice.embeddings must be an array of numbers")
        if not isinstance(shape, list) or not all(isinstance(v, int) and v > 0 for v in shape):
            raise ProtocolError("Voice.shape must be an array of positive ints")
        arr = np.asarray(values, dtype=np.float32)
        if int(np.prod(shape)) != arr.size:
            raise ProtocolError(f"Voice.shape {shape} does not match {arr.size} values")
        return VoiceIn(arr.reshape(shape))
    raise ProtocolError(f"unknown message type {kind!r}")  # pragma: no cover - allowed lists only known
