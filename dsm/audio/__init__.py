"""Audio I/O: reading, writing, in-memory encoding, resampling and streaming Ogg/Opus."""

from dsm.audio.io import (
    ENCODE_FORMATS,
    WRITE_FORMATS,
    AudioInfo,
    AudioSource,
    AudioStream,
    as_channels_first,
    audio_info,
    encode_audio,
    read_audio,
    read_audio_with_rate,
    resample,
    stream_audio,
    write_audio,
)
from dsm.audio.opus import OPUS_SAMPLE_RATES, OpusStreamDecoder, OpusStreamEncoder

__all__ = [
    "ENCODE_FORMATS",
    "OPUS_SAMPLE_RATES",
    "WRITE_FORMATS",
    "AudioInfo",
    "AudioSource",
    "AudioStream",
    "OpusStreamDecoder",
    "OpusStreamEncoder",
    "as_channels_first",
    "audio_info",
    "encode_audio",
    "read_audio",
    "read_audio_with_rate",
    "resample",
    "stream_audio",
    "write_audio",
]
