"""dsm's bundled offline models (dsm/models, docs/models.md): used by default, offline.

Shipped: the codec and the STT. The held-out clip (tests/data/bundled/) is a test-split sentence of the
bundled corpus, spoken by the Piper voice, never heard in training: the first Piper test utterance (corpus
order) of seven words or more that the STT shipped on 2026-12-05 transcribed without error (the STT shipped
since 2026-12-06 gets about one word in ten wrong on held-out speech, docs/models.md, and this clip right),
so these tests guard the shipped model's behaviour and timestamps; its quality is measured by
benchmarks/bundled_eval.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dsm.audio import read_audio
from dsm.bundled import bundled
from dsm.cli import main
from dsm.codec import load_mimi
from dsm.errors import CheckpointError
from dsm.stt import Transcriber
from dsm.stt.wer import word_errors
from dsm.train.codec import MultiScaleMelLoss

DATA = Path(__file__).parent / "data" / "bundled"
CLIP = json.loads((DATA / "heldout.json").read_text())
# Multi-scale mel distance of the round trip (the codec's training loss, log floor -60 dBFS): measured
# 0.99 on this clip (1.15 with the codec shipped until 2026-12-06); silence scores 4.20 and the clip plus
# white noise at -30 dBFS 4.44.
MAX_ROUND_TRIP_MEL = 1.5


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the bundled models never touch the network


def mel_distance(decoded: np.ndarray, original: np.ndarray) -> float:
    loss = MultiScaleMelLoss(24_000, [64, 128, 256, 512, 1024, 2048], 64, floor_db=-60.0)
    return float(loss(torch.from_numpy(decoded)[None, None], torch.from_numpy(original)[None, None]))


def test_bundled_codec_is_complete_and_small():
    directory = bundled("codec")
    assert sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) <= 16e6
    mimi = load_mimi(directory)
    assert mimi.total_codebooks == 16 and mimi.cfg.seanet.n_filters == 16


def test_bundled_models_fit_the_size_budget():
    """Everything shipped under dsm/models stays within issue 8's 60 MB."""
    from dsm.bundled import ROOT

    bundled("stt")  # complete, with the shared codec
    assert sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file()) <= 60e6


def test_main_job_roundtrip_uses_bundled_codec(tmp_path, capsys):
    """The README's main job (`dsm codec roundtrip IN OUT`) with no model flags: the bundled codec, offline;
    the held-out speech comes back close to the original."""
    out = tmp_path / "roundtrip.wav"
    assert main(["codec", "roundtrip", str(DATA / CLIP["audio"]), str(out)]) == 0
    assert "16 codebooks" in capsys.readouterr().out
    original = read_audio(str(DATA / CLIP["audio"]), sample_rate=24_000)
    decoded = read_audio(str(out), sample_rate=24_000)
    assert decoded.shape == original.shape
    assert mel_distance(decoded, original) <= MAX_ROUND_TRIP_MEL


def test_encode_decode_cli_with_bundled_codec(tmp_path):
    codes = tmp_path / "codes.safetensors"
    out = tmp_path / "decoded.wav"
    assert main(["codec", "encode", str(DATA / CLIP["audio"]), str(codes), "--n-q", "4"]) == 0
    assert main(["codec", "decode", str(codes), str(out)]) == 0
    original = read_audio(str(DATA / CLIP["audio"]), sample_rate=24_000)
    assert read_audio(str(out), sample_rate=24_000).shape == original.shape  # trimmed to the input
    assert main(["codec", "encode", str(DATA / CLIP["audio"]), str(codes), "--n-q", "17"]) == 2


def test_unshipped_models_fail_clearly(monkeypatch, tmp_path, capsys):
    """Where a bundled model is not installed, the default says so and names the published model."""
    monkeypatch.setattr("dsm.bundled.ROOT", tmp_path / "models")
    with pytest.raises(CheckpointError, match=r"bundled stt model is not installed.*kyutai/stt-1b-en_fr"):
        Transcriber.from_checkpoint()
    assert main(["stt", str(DATA / CLIP["audio"])]) == 2
    assert "--hf-repo kyutai/stt-1b-en_fr" in capsys.readouterr().err
    text = tmp_path / "in.txt"
    text.write_text("Hello.")
    assert main(["tts", str(text), str(tmp_path / "o.wav")]) == 2
    assert "--hf-repo kyutai/tts-1.6b-en_fr" in capsys.readouterr().err
    assert main(["codec", "roundtrip", str(DATA / CLIP["audio"]), str(tmp_path / "o.wav")]) == 2
    assert "bundled codec model is not installed" in capsys.readouterr().err


def test_bundled_stt_transcribes_heldout_clip_with_timestamps():
    """The bundled STT, with no model named, on a held-out sentence: the expected words, each starting
    within 160 ms (two frames) of its aligned start."""
    transcript = Transcriber.from_checkpoint().transcribe(str(DATA / CLIP["audio"]))
    assert word_errors(CLIP["text"], transcript.text, normalize=True).errors == 0, transcript.text
    assert len(transcript.words) == len(CLIP["words"])
    for got, expected in zip(transcript.words, CLIP["words"], strict=True):
        assert abs(got.start - expected["start"]) <= 0.16, (got, expected)
        assert got.end >= got.start


def test_stt_cli_defaults_to_bundled_model(capsys):
    assert main(["stt", "--format", "json", str(DATA / CLIP["audio"])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert word_errors(CLIP["text"], out["text"], normalize=True).errors == 0, out["text"]
    assert [w["start"] for w in out["words"]] == pytest.approx([w["start"] for w in CLIP["words"]], abs=0.16)


def test_example_server_config_serves_bundled_stt(tmp_path, monkeypatch):
    """`dsm serve --config configs/bundled.toml`: the bundled STT behind the moshi-server protocol, over a
    real WebSocket on loopback; the held-out clip's words come back as Word messages."""
    aiohttp = pytest.importorskip("aiohttp")
    msgpack = pytest.importorskip("msgpack")
    from dsm.server import BackgroundServer, Server, load_config

    monkeypatch.setenv("HOME", str(tmp_path))  # the config's log_dir is under $HOME
    server = Server(load_config(Path(__file__).resolve().parents[1] / "configs" / "bundled.toml"))
    server.load()
    background = BackgroundServer(server)
    url = background.start().replace("http://", "ws://") + "/api/asr-streaming"
    pcm = read_audio(str(DATA / CLIP["audio"]), sample_rate=24_000)
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % 1920 + 10 * 1920, np.float32)])  # the delay's frames

    def packed(message: dict) -> bytes:
        return msgpack.packb(message, use_single_float=True)

    async def session() -> list[dict]:
        headers = {"kyutai-api-key": "public_token"}
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
            assert msgpack.unpackb((await ws.receive(timeout=60)).data) == {"type": "Ready"}
            for i in range(0, len(pcm), 1920):
                await ws.send_bytes(packed({"type": "Audio", "pcm": pcm[i : i + 1920].tolist()}))
            await ws.send_bytes(packed({"type": "Marker", "id": 7}))
            for _ in range(8):
                await ws.send_bytes(packed({"type": "Audio", "pcm": [0.0] * 1920}))
            messages = []
            async for m in ws:
                messages.append(msgpack.unpackb(m.data))
                if messages[-1]["type"] in ("Marker", "Error"):
                    return messages
            return messages

    try:
        import asyncio

        messages = asyncio.run(asyncio.wait_for(session(), 120))
    finally:
        background.stop()
    assert messages[-1] == {"type": "Marker", "id": 7}
    words = [m for m in messages if m["type"] == "Word"]
    text = " ".join(m["text"] for m in words)
    assert word_errors(CLIP["text"], text, normalize=True).errors == 0, text
    starts = [m["start_time"] for m in words]
    assert starts == pytest.approx([w["start"] for w in CLIP["words"]], abs=0.16)


def test_vad_flag_warns_without_an_end_of_turn_head(capsys):
    """The bundled STT has no end-of-turn head: `--vad` says so and still transcribes."""
    assert main(["stt", "--vad", str(DATA / CLIP["audio"])]) == 0
    captured = capsys.readouterr()
    assert "no end-of-turn head" in captured.err
    assert word_errors(CLIP["text"], captured.out.strip(), normalize=True).errors == 0
