"""dsm's bundled offline models (dsm/models, docs/models.md): used by default, offline.

Shipped: the codec, the STT and the TTS. The held-out clip (tests/data/bundled/) is a test-split sentence
of the bundled corpus, spoken by the Piper voice, never heard in training: the first Piper test utterance
(corpus order) of seven words or more that the STT shipped on 2026-12-05 transcribed without error (the
STT shipped since 2026-12-06 gets about one word in ten wrong on held-out speech, docs/models.md, and this
clip right), so these tests guard the shipped model's behaviour and timestamps; its quality is measured by
benchmarks/bundled_eval.py. tts_heldout.json: the test-split sentences of eight words or fewer among the
first twelve in sorted order (those benchmarks/bundled_eval.py's TTS sample starts with)."""

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
# Corpus WER of the bundled STT on the bundled TTS's speech of tts_heldout.json's held-out sentences (35
# words), per voice: measured 14.3 % for `joe` and 20.0 % for `joe-deep` (the tts_more4 model; 17.1 / 42.9 %
# with tts_more2's; greedy, so the same on every run of one machine; speech of other sentences scores about
# 100 %)
MAX_TTS_STT_WER = 0.6


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
    bundled("tts")
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


def test_example_server_config_serves_bundled_models(tmp_path, monkeypatch):
    """`dsm serve --config configs/bundled.toml`: the bundled STT and TTS behind the moshi-server protocol,
    over real WebSockets on loopback; the held-out clip's words come back as Word messages, and a held-out
    sentence sent word by word comes back as speech the bundled STT understands."""
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

    async def tts_session(sentence: str) -> list[dict]:
        headers = {"kyutai-api-key": "public_token"}
        tts_url = url.replace("/api/asr-streaming", "/api/tts_streaming") + "?format=PcmMessagePack"
        async with aiohttp.ClientSession() as http, http.ws_connect(tts_url, headers=headers) as ws:
            for word in sentence.split():
                await ws.send_bytes(packed({"type": "Text", "text": word}))
            await ws.send_bytes(packed({"type": "Eos"}))
            return [msgpack.unpackb(m.data) async for m in ws]

    try:
        import asyncio

        messages = asyncio.run(asyncio.wait_for(session(), 120))
        sentence = tts_sentences()[1]
        spoken = asyncio.run(asyncio.wait_for(tts_session(sentence), 120))
    finally:
        background.stop()
    assert spoken[0] == {"type": "Ready"}
    assert [m["text"] for m in spoken if m["type"] == "Text"] == sentence.split()
    speech = np.concatenate([m["pcm"] for m in spoken if m["type"] == "Audio"]).astype(np.float32)
    heard = Transcriber.from_checkpoint().transcribe(speech, 24_000).text
    assert word_errors(sentence, heard, normalize=True).errors / len(sentence.split()) <= MAX_TTS_STT_WER
    assert messages[-1] == {"type": "Marker", "id": 7}
    words = [m for m in messages if m["type"] == "Word"]
    text = " ".join(m["text"] for m in words)
    assert word_errors(CLIP["text"], text, normalize=True).errors == 0, text
    starts = [m["start_time"] for m in words]
    assert starts == pytest.approx([w["start"] for w in CLIP["words"]], abs=0.16)


def tts_sentences() -> list[str]:
    return json.loads((DATA / "tts_heldout.json").read_text())["sentences"]


def test_bundled_tts_speaks_what_the_bundled_stt_hears(tmp_path, capsys):
    """The README's `dsm tts` with no model flags: the bundled TTS (greedy, soft decoding: its config's
    generation table) speaks held-out sentences in each of its voices, and the bundled STT transcribes them
    back with a corpus WER under MAX_TTS_STT_WER (docs/models.md)."""
    sentences = tts_sentences()
    assert main(["tts", "--list-voices"]) == 0
    assert "joe-deep" in capsys.readouterr().out
    stt = Transcriber.from_checkpoint()
    for voice in ("joe", "joe-deep"):
        hyps = []
        for i, sentence in enumerate(sentences):
            text, out = tmp_path / f"{i}.txt", tmp_path / f"{voice}_{i}.wav"
            text.write_text(sentence + "\n")
            assert main(["tts", str(text), str(out), "--voice", voice, "-q"]) == 0
            audio = read_audio(str(out), sample_rate=24_000)
            words = len(sentence.split())
            assert 0.15 * words < len(audio) / 24_000 < 1.0 * words + 2.0  # speech of the sentence's length
            hyps.append(stt.transcribe(audio, 24_000).text)
        errors = sum(word_errors(r, h, normalize=True).errors for r, h in zip(sentences, hyps, strict=True))
        words = sum(len(r.split()) for r in sentences)
        assert errors / words <= MAX_TTS_STT_WER, (voice, hyps)


def test_bundled_tts_python_api_defaults():
    """`Synthesizer.from_checkpoint()` with no model named: the bundled TTS in float32 (on CPU), its default
    voice `joe` and its sampling defaults; greedy, so the same text gives the same audio."""
    from dsm.tts import Synthesizer

    synth = Synthesizer.from_checkpoint()
    assert next(synth.lm.parameters()).dtype == torch.float32
    assert synth.default_voice == "joe" and synth.temperature == 0.0 and synth.soft_decode
    sentence = tts_sentences()[0]
    first, again = synth.synthesize(sentence), synth.synthesize(sentence)
    np.testing.assert_array_equal(first.audio, again.audio)
    assert [w.text for w in first.words] == sentence.split()


def test_vad_flag_warns_without_an_end_of_turn_head(capsys):
    """The bundled STT has no end-of-turn head: `--vad` says so and still transcribes."""
    assert main(["stt", "--vad", str(DATA / CLIP["audio"])]) == 0
    captured = capsys.readouterr()
    assert "no end-of-turn head" in captured.err
    assert word_errors(CLIP["text"], captured.out.strip(), normalize=True).errors == 0
