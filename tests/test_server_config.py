"""moshi-server TOML configs, API keys, message encoding and metrics of `dsm.server` (no sockets)."""

from __future__ import annotations

import math
from pathlib import Path

import msgpack
import numpy as np
import pytest

pytest.importorskip("aiohttp")

from dsm.errors import CheckpointError, InputError  # noqa: E402
from dsm.lm import LMConfig  # noqa: E402
from dsm.server.asr_model import lm_config_from_candle, mimi_config_from_table  # noqa: E402
from dsm.server.auth import is_authorized  # noqa: E402
from dsm.server.config import expand_env, load_config, parse_config  # noqa: E402
from dsm.server.metrics import Registry  # noqa: E402
from dsm.server.protocol import (  # noqa: E402
    STT_TYPES,
    TTS_TYPES,
    AudioIn,
    MarkerIn,
    OggOpusIn,
    ProtocolError,
    TextIn,
    VoiceIn,
    pack,
    parse_client_message,
)

ASR = {"type": "BatchedAsr", "batch_size": 2, "asr_delay_in_tokens": 6, "hf_repo": "some/repo"}


def test_env_expansion_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("DSM_A", "alpha")
    monkeypatch.delenv("DSM_UNSET", raising=False)
    assert expand_env("$DSM_A/x-$DSM_UNSET-${DSM_A}") == "alpha/x--${DSM_A}"  # no ${...}, as the reference
    (tmp_path / "w.safetensors").write_bytes(b"")
    monkeypatch.setenv("DSM_DIR", str(tmp_path))
    cfg = parse_config(
        {
            "static_dir": "$DSM_DIR/static",
            "log_dir": "$DSM_DIR/logs",
            "instance_name": "tts",
            "authorized_ids": ["public_token"],
            "modules": {
                "asr": {**ASR, "lm_model_file": "$DSM_DIR/w.safetensors", "hf_repo": "$DSM_DIR"},
                "tts": {
                    "type": "Py",
                    "batch_size": 8,
                    "text_bos_token": 1,
                    "py": {
                        "voice_folder": "hf-snapshot://kyutai/tts-voices/**/*.safetensors",
                        "n": [1, "$DSM_A"],
                    },
                },
            },
        }
    )
    assert cfg.static_dir == f"{tmp_path}/static" and cfg.log_dir == f"{tmp_path}/logs"
    assert cfg.authorized_ids == frozenset({"public_token"})
    (asr,) = cfg.asr
    assert asr.lm_model_file == str(tmp_path / "w.safetensors") and asr.hf_repo == str(tmp_path)
    assert asr.path == "/api/asr-streaming" and asr.openai_path == "/v1/audio/transcriptions"
    assert asr.idle_timeout_s == 120 and asr.max_session_s == 0 and not asr.exact and asr.quantize is None
    (tts,) = cfg.tts
    assert tts.path == "/api/tts_streaming" and tts.openai_path == "/v1/audio/speech"
    # hf-snapshot:// is left to the TTS module; other strings of the py table are expanded recursively.
    assert tts.py == {"voice_folder": "hf-snapshot://kyutai/tts-voices/**/*.safetensors", "n": [1, "alpha"]}


def test_conditioning_delay_overrides_the_asr_delay():
    cfg = parse_config({"authorized_ids": [], "modules": {"asr": {**ASR, "conditioning_delay": 0.5}}})
    assert cfg.asr[0].asr_delay_in_tokens == math.floor(0.5 * 12.5) + 1


def test_second_module_of_a_kind_gets_no_openai_route():
    modules = {
        "one": ASR,
        "two": {**ASR, "path": "/api/other"},
        "three": {**ASR, "path": "/x", "openai_path": ""},
    }
    cfg = parse_config({"authorized_ids": ["k"], "modules": modules})
    assert [m.openai_path for m in cfg.asr] == ["/v1/audio/transcriptions", None, None]


@pytest.mark.parametrize(
    "raw,match",
    [
        ({}, "authorized_ids"),
        ({"authorized_ids": "public_token"}, "array of strings"),
        ({"authorized_ids": [1]}, "array of strings"),
        ({"authorized_ids": [], "modules": {"m": {"type": "Lm"}}}, "not supported"),
        ({"authorized_ids": [], "modules": {"m": {"type": "Nope"}}}, "unknown module type"),
        ({"authorized_ids": [], "modules": {"m": {**ASR, "batch_size": 0}}}, "batch_size: must be >= 1"),
        (
            {"authorized_ids": [], "modules": {"m": {**ASR, "batch_size": "8"}}},
            "batch_size: expected an integer",
        ),
        ({"authorized_ids": [], "modules": {"m": {**ASR, "exact": 1}}}, "exact: expected true or false"),
        (
            {"authorized_ids": [], "modules": {"m": {**ASR, "quantize": "int3"}}},
            "quantize: expected one of fp16, int8, w8a8, int4",
        ),
        ({"authorized_ids": [], "modules": {"m": {**ASR, "path": "api"}}}, "must start with '/'"),
        ({"authorized_ids": [], "modules": {"a": ASR, "b": ASR}}, "already used"),
        (
            {"authorized_ids": [], "modules": {"m": {k: v for k, v in ASR.items() if k != "hf_repo"}}},
            "missing",
        ),
        (
            {
                "authorized_ids": [],
                "modules": {"m": {k: v for k, v in ASR.items() if k != "asr_delay_in_tokens"}},
            },
            "asr_delay_in_tokens",
        ),
    ],
)
def test_config_errors_name_the_key(raw, match):
    with pytest.raises(InputError, match=match):
        parse_config(raw)


def test_hf_references(tmp_path):
    bad = {"authorized_ids": [], "modules": {"m": {**ASR, "lm_model_file": "hf://kyutai/only-two"}}}
    with pytest.raises(CheckpointError, match="modules.m.lm_model_file.*hf://ORG/REPO/path"):
        parse_config(bad)
    path = tmp_path / "c.toml"
    path.write_text('authorized_ids = ["k"]\n[modules.asr\n')
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_candle_model_table_matches_the_kyutai_config(stt_assets):
    cfg = stt_assets["cfg"]
    table = {
        "audio_vocab_size": cfg["card"] + 1,
        "text_in_vocab_size": cfg["text_card"] + 1,
        "text_out_vocab_size": cfg["text_card"],
        "audio_codebooks": cfg["n_q"],
        "transformer": {
            "d_model": cfg["dim"],
            "num_heads": cfg["num_heads"],
            "num_layers": cfg["num_layers"],
            "dim_feedforward": 4 * cfg["dim"],
            "context": cfg["context"],
            "max_period": cfg["max_period"],
            "gating": "silu",
            "norm": "RmsNorm",
            "positional_embedding": "Rope",
            "causal": True,
        },
        "extra_heads": {"num_heads": 4, "dim": 6},
    }
    got = lm_config_from_candle(table, stt_assets["root"] / "model.safetensors")
    want = LMConfig.from_kyutai(cfg)
    assert got.temporal() == want.temporal()  # feed-forward width read from the weights (hidden_scale 4.125)
    for key in (
        "n_q",
        "dep_q",
        "card",
        "text_card",
        "text_out",
        "extra_heads_num_heads",
        "extra_heads_dim",
        "delays",
    ):
        assert getattr(got, key) == getattr(want, key), key
    with pytest.raises(InputError, match="transformer"):
        lm_config_from_candle(
            {k: v for k, v in table.items() if k != "transformer"}, stt_assets["root"] / "x"
        )


def test_api_keys():
    ids = frozenset({"k1"})

    def ok(headers=None, query=None, **kw):
        return is_authorized(headers or {}, query or {}, ids, **kw)

    assert ok({"kyutai-api-key": "k1"}, allow_query=False)
    assert not ok({"kyutai-api-key": "K1"}, allow_query=True)  # exact match
    assert ok(query={"auth_id": "k1"}, allow_query=True)
    assert not ok(query={"auth_id": "k1"}, allow_query=False)
    assert not ok({"kyutai-api-key": "bad"}, {"auth_id": "k1"}, allow_query=True)  # the header wins
    assert not ok({"kyutai-api-key": "k1\u00e9"}, {"auth_id": "k1"}, allow_query=True)  # not visible ASCII
    assert ok({"Authorization": "Bearer k1"}, allow_query=False, allow_bearer=True)
    assert not ok({"Authorization": "Bearer k1"}, allow_query=False)
    assert not ok(allow_query=True, allow_bearer=True)


def test_server_messages_are_packed_as_the_reference():
    data = pack("Word", text="hi", start_time=1.5)
    assert data[:1] == b"\x83" and data[1:6] == b"\xa4type"  # a 3-entry map, "type" first
    assert msgpack.unpackb(data) == {"type": "Word", "text": "hi", "start_time": 1.5}
    assert b"\xcb" in data  # start_time as float64
    step = pack("Step", step_idx=3, prs=[0.25, 0.5], buffered_pcm=0)
    assert step.count(b"\xca") == 2 and b"\xcb" not in step  # prs as float32
    assert msgpack.unpackb(pack("OggOpus", data=b"\x01\xff")) == {"type": "OggOpus", "data": [1, 255]}


def test_client_messages_are_validated():
    def parse(msg, allowed=STT_TYPES):
        return parse_client_message(msgpack.packb(msg, use_bin_type=True), allowed)

    audio = parse({"pcm": [0, 0.5, -1], "type": "Audio", "extra": 1})  # any key order, extra keys ignored
    assert isinstance(audio, AudioIn) and audio.pcm.dtype == np.float32 and audio.pcm.tolist() == [0, 0.5, -1]
    assert parse({"type": "Audio", "pcm": []}).pcm.shape == (0,)
    assert parse({"type": "Marker", "id": -5}) == MarkerIn(-5)
    assert parse({"type": "OggOpus", "data": b"\x00\x01"}) == OggOpusIn(b"\x00\x01")  # bin or int array
    assert parse({"type": "OggOpus", "data": [0, 1]}) == OggOpusIn(b"\x00\x01")
    assert parse({"type": "Text", "text": "hello"}, TTS_TYPES) == TextIn("hello")
    voice = parse({"type": "Voice", "embeddings": [1.0] * 6, "shape": [1, 2, 3]}, TTS_TYPES)
    assert isinstance(voice, VoiceIn) and voice.embeddings.shape == (1, 2, 3)
    for bad, match in [
        ({"type": "Audio", "pcm": [True]}, "array of numbers"),
        ({"type": "Audio", "pcm": [[0.1]]}, "array of numbers"),
        ({"type": "Audio", "pcm": [1e40]}, "non-finite"),
        ({"type": "Marker", "id": 1.5}, "64-bit integer"),
        ({"type": "OggOpus", "data": [256]}, "bytes"),
        ({"type": "Text", "text": "x"}, "unknown message type"),
        ({"pcm": []}, "no string 'type'"),
        ([1, 2], "msgpack map"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            parse(bad)
    with pytest.raises(ProtocolError, match="shape"):
        parse({"type": "Voice", "embeddings": [1.0] * 5, "shape": [2, 3]}, TTS_TYPES)


def test_metrics_exposition():
    reg = Registry()
    assert reg.render() == "\n"  # nothing used yet: nothing exported
    reg.counter("asr_connect", "sessions").inc()
    errors = reg.counter("errs", "errors", "kind")
    errors.inc(value="protocol")
    errors.inc(value="protocol")
    reg.gauge("asr_open_channels", "slots").set(2)
    hist = reg.histogram("asr_model_step_duration", "step", (0.02, 0.08))
    for v in (0.01, 0.05, 0.5):
        hist.observe(v)
    text = reg.render()
    assert 'asr_connect{handler="all"} 1\n' in text and "# TYPE asr_connect counter" in text
    assert 'errs{handler="all",kind="protocol"} 2' in text
    assert 'asr_open_channels{handler="all"} 2' in text
    assert 'asr_model_step_duration_bucket{le="0.02"} 1' in text
    assert 'asr_model_step_duration_bucket{le="0.08"} 2' in text
    assert 'asr_model_step_duration_bucket{le="+Inf"} 3' in text
    assert "asr_model_step_duration_count 3" in text and "asr_model_step_duration_sum 0.56" in text


def _sparse_safetensors(path, name: str, shape: list[int]) -> None:
    """A safetensors file holding one bf16 tensor of `shape`, written sparse (no disk used)."""
    import json
    import struct

    size = 2 * math.prod(shape)
    header = json.dumps({name: {"dtype": "BF16", "shape": shape, "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + size)


@pytest.mark.parametrize("name", ["stt-1b-en_fr", "stt-2.6b-en", "stt-local", "tts"])
def test_example_configs(name, tmp_path, monkeypatch):
    """configs/*.toml parse; the Kyutai ones give the architectures of the published config.json files."""
    import lm_configs

    import dsm.hub

    fetched = []

    def fake_hub(ref, repo=None):
        fetched.append(str(ref))
        return tmp_path / str(ref).rsplit("/", 1)[-1]

    monkeypatch.setattr(dsm.hub, "resolve_reference", fake_hub)
    monkeypatch.setenv("DSM_STT_MODEL", str(tmp_path))
    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "configs" / f"{name}.toml")
    if name == "tts":
        (tts,) = cfg.tts
        assert tts.path == "/api/tts_streaming" and tts.batch_size == 8 and tts.text_bos_token == 1
        assert tts.py["voice_folder"] == "hf-snapshot://kyutai/tts-voices/**/*.safetensors"
        assert tts.py["n_q"] == 24 and tts.openai_path == "/v1/audio/speech"
        assert fetched == ["hf://kyutai/tts-1.6b-en_fr/tokenizer_spm_8k_en_fr_audio.model"]
        return
    (asr,) = cfg.asr
    assert cfg.authorized_ids == frozenset({"public_token"}) and asr.path == "/api/asr-streaming"
    if name == "stt-local":  # the bundled model's small codec
        assert asr.hf_repo == str(tmp_path) and not fetched
        mimi = mimi_config_from_table(asr.mimi_config, "stt-local")
        assert (mimi.n_q, mimi.bins, mimi.seanet.n_filters, mimi.seanet.dimension) == (8, 1024, 16, 256)
        return
    assert all(ref.startswith(f"hf://kyutai/{name}-candle/") for ref in fetched) and len(fetched) == 3
    kyutai = {"stt-1b-en_fr": lm_configs.STT_1B, "stt-2.6b-en": lm_configs.STT_2B6}[name]
    want = LMConfig.from_kyutai(kyutai)
    hidden = 2 * int(want.temporal().dim_feedforward) // 3
    _sparse_safetensors(
        tmp_path / "model.safetensors", "transformer.layers.0.gating.linear_in.weight", [2 * hidden, want.dim]
    )
    got = lm_config_from_candle(asr.model, tmp_path / "model.safetensors")
    assert got.temporal() == want.temporal()
    for key in ("n_q", "card", "text_card", "text_out", "extra_heads_num_heads", "context"):
        assert getattr(got, key) == getattr(want, key), key
    stt = kyutai["stt_config"]
    assert (asr.audio_silence_prefix_seconds, asr.audio_delay_seconds) == (
        stt["audio_silence_prefix_seconds"],
        stt["audio_delay_seconds"],
    )
