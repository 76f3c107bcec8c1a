"""The TTS side of the server over real loopback sockets, against offline synthesis of the same text.

A `Py` module (3 slots, exact kernels, greedy) serves the small TTS checkpoint of `tests/tts_assets.py`;
every session's audio and word timestamps must equal `Synthesizer.synthesize` of its text and voice.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time

import numpy as np
import pytest
import soundfile as sf
import torch

aiohttp = pytest.importorskip("aiohttp")
msgpack = pytest.importorskip("msgpack")
tts_assets = pytest.importorskip("tts_assets")

from dsm.audio.opus import OpusStreamDecoder  # noqa: E402
from dsm.server import BackgroundServer, Server, load_config  # noqa: E402
from dsm.tts.synthesizer import Synthesizer  # noqa: E402

KEY = "tts-key"
HEADERS = {"kyutai-api-key": KEY}
VOICE, VOICE2, _ = tts_assets.VOICES
TEXT1 = "Good morning to you."
TEXT2 = "The river is green."


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model thread and the test's own synthesizer share 2 busy cores
    root = tmp_path_factory.mktemp("tts")
    assets = tts_assets.build(root)
    config = root / "server.toml"
    config.write_text(
        f"""
authorized_ids = ["{KEY}"]

[modules.tts]
type = "Py"
path = "/api/tts_streaming"
batch_size = 3
text_tokenizer_file = "{assets["repo"]}/{tts_assets.TOK_NAME}"
text_bos_token = 1
exact = true
idle_timeout_s = 2.0
mimi_config = {{ num_layers = 1 }}

[modules.tts.py]
hf_repo = "{assets["repo"]}"
voice_folder = "{assets["voices"]}"
default_voice = "{VOICE}"
n_q = 8
temp = 0.0
cfg_coef = 2.0
soft_decode = false
"""
    )
    server = Server(load_config(config))
    server.load()
    background = BackgroundServer(server)
    url = background.start()
    synth = Synthesizer.from_checkpoint(
        assets["repo"],
        dtype=torch.float32,
        mimi_config=tts_assets.MIMI_1L,
        voice_repo=str(assets["voices"]),
        n_q=8,
        temperature=0.0,
        exact=True,
    )
    offline = {
        (TEXT1, VOICE): synth.synthesize(TEXT1, VOICE),
        (TEXT2, VOICE2): synth.synthesize(TEXT2, VOICE2),
    }
    yield {"url": url, "server": server, "synth": synth, "offline": offline, "assets": assets}
    background.stop()
    torch.set_num_threads(threads)


def run(coro):
    return asyncio.run(coro)


def ws_url(setup, query: str) -> str:
    return setup["url"].replace("http://", "ws://") + "/api/tts_streaming" + query


async def tts_session(setup, text, query="?format=PcmMessagePack", sends=None, headers=HEADERS):
    """Send `text` word by word (one Text message each) then Eos; all frames until the server closes."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(setup, query), headers=headers) as ws:
        if sends is None:
            sends = [msgpack.packb({"type": "Text", "text": w}) for w in text.split()]
            sends.append(msgpack.packb({"type": "Eos"}))
        for data in sends:
            await (ws.send_str(data) if isinstance(data, str) else ws.send_bytes(data))
        frames = [m async for m in ws]
        return frames, ws.close_code


def check_pcm_session(setup, frames, close_code, key):
    expected = setup["offline"][key]
    msgs = [msgpack.unpackb(f.data) for f in frames]
    assert msgs[0] == {"type": "Ready"} and close_code == 1000
    audio_msgs = [m for m in msgs if m["type"] == "Audio"]
    assert all(len(m["pcm"]) == 1920 for m in audio_msgs)
    audio = np.concatenate([m["pcm"] for m in audio_msgs])
    assert len(audio) == len(expected.audio)
    assert np.abs(audio - np.clip(expected.audio, -0.99, 0.99)).max() < 1e-4
    words = [(m["text"], m["start_s"], m["stop_s"]) for m in msgs if m["type"] == "Text"]
    assert words == [(w.text, w.start, w.end) for w in expected.words]
    assert {m["type"] for m in msgs} == {"Ready", "Audio", "Text"}


def test_concurrent_sessions_equal_offline_synthesis(setup):
    async def scenario():
        async def later(coro, delay):
            await asyncio.sleep(delay)
            return await coro

        first = asyncio.create_task(tts_session(setup, TEXT1))
        second = asyncio.create_task(
            later(tts_session(setup, TEXT2, f"?format=PcmMessagePack&voice={VOICE2}"), 0.4)
        )
        # A Voice message (the same embedding as VOICE2's file) before the text: a custom voice.
        from safetensors.torch import load_file

        emb = load_file(str(setup["assets"]["voices"] / (VOICE2 + tts_assets.SUFFIX)))["speaker_wavs"]
        voice_msg = msgpack.packb(
            {"type": "Voice", "embeddings": emb.flatten().tolist(), "shape": list(emb.shape)},
            use_single_float=True,
        )
        sends = [
            voice_msg,
            TEXT2.split()[0],
            *[msgpack.packb({"type": "Text", "text": w}) for w in TEXT2.split()[1:]],
        ]
        third = asyncio.create_task(later(tts_session(setup, TEXT2, sends=[*sends, b"\x00"]), 0.8))
        module = setup["server"].services[0].loop
        while module.used_slots < 3:
            await asyncio.sleep(0.02)
        busy = await tts_session(setup, TEXT1)
        return await first, await second, await third, busy

    first, second, third, busy = run(scenario())
    check_pcm_session(setup, *first, (TEXT1, VOICE))
    check_pcm_session(setup, *second, (TEXT2, VOICE2))
    check_pcm_session(setup, *third, (TEXT2, VOICE2))  # text frames and a lone 0x00 Eos work too
    assert [msgpack.unpackb(f.data) for f in busy[0]] == [{"type": "Error", "message": "no free channels"}]


def test_raw_and_ogg_formats(setup):
    expected = setup["offline"][(TEXT1, VOICE)].audio

    async def scenario():
        return await asyncio.gather(
            tts_session(setup, TEXT1, "?format=Pcm"),
            tts_session(
                setup, TEXT1, "?format=OggOpus&voice=no/such/voice.wav"
            ),  # unknown: the default voice
            tts_session(setup, TEXT1, "?format=OggOpusMessagePack"),
        )

    (pcm_frames, pcm_code), (ogg_frames, ogg_code), (mp_frames, mp_code) = run(scenario())
    assert pcm_code == ogg_code == mp_code == 1000
    assert all(f.type == aiohttp.WSMsgType.BINARY and len(f.data) == 7680 for f in pcm_frames)
    pcm = np.frombuffer(b"".join(f.data for f in pcm_frames), "<f4")
    assert np.abs(pcm - np.clip(expected, -0.99, 0.99)).max() < 1e-4
    assert ogg_frames[0].data.startswith(b"OggS") and b"OpusHead" in ogg_frames[0].data
    decoded = OpusStreamDecoder(24000).decode(b"".join(f.data for f in ogg_frames))
    assert abs(len(decoded) - len(expected)) <= 1920
    msgs = [msgpack.unpackb(f.data) for f in mp_frames]
    assert msgs[0] == {"type": "Ready"} and msgs[1]["type"] == "OggOpus"
    assert bytes(msgs[1]["data"]).startswith(b"OggS")
    data = b"".join(bytes(m["data"]) for m in msgs if m["type"] == "OggOpus")
    assert abs(len(OpusStreamDecoder(24000).decode(data)) - len(expected)) <= 1920
    assert [m["text"] for m in msgs if m["type"] == "Text"] == TEXT1.split()


def test_query_auth_and_bad_input(setup):
    async def status(query, headers=HEADERS):
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(ws_url(setup, query), headers=headers),
            ):
                return 101
        except aiohttp.WSServerHandshakeError as e:
            return e.status

    async def scenario():
        assert await status("?format=wav", {}) == 400  # the query is checked before the key
        assert await status("?format=pcm") == 400  # formats are case-sensitive
        assert await status("?format=Pcm", {}) == 401
        assert await status("?format=Pcm", {"kyutai-api-key": "nope"}) == 401
        assert await status(f"?format=Pcm&auth_id={KEY}", {}) == 101
        # Eos before any text: closed at once, no audio.
        frames, code = await tts_session(setup, "", sends=[msgpack.packb({"type": "Eos"})])
        assert [msgpack.unpackb(f.data) for f in frames] == [{"type": "Ready"}] and code == 1000
        # Malformed messages end the session with an Error and a close frame.
        for bad, text in (
            (b"\xc1", "msgpack"),
            (msgpack.packb({"type": "Audio", "pcm": []}), "unknown message type"),
        ):
            frames, code = await tts_session(setup, "", sends=[bad])
            msgs = [msgpack.unpackb(f.data) for f in frames]
            assert (
                msgs[0] == {"type": "Ready"} and msgs[-1]["type"] == "Error" and text in msgs[-1]["message"]
            )
            assert code == 1003
        # A client that sends nothing: after idle_timeout_s the (empty) text is taken as finished.
        frames, code = await tts_session(setup, "", sends=[])
        assert [msgpack.unpackb(f.data) for f in frames] == [{"type": "Ready"}] and code == 1000

    run(scenario())
    module = setup["server"].services[0].loop
    end = time.monotonic() + 10
    while module.used_slots and time.monotonic() < end:
        time.sleep(0.02)
    assert module.used_slots == 0


def test_post_and_openai_speech(setup):
    expected = setup["offline"][(TEXT1, VOICE)].audio
    pcm16 = (np.clip(expected, -1, 1) * 32767).astype(np.int16)

    async def post(path, body, headers):
        async with (
            aiohttp.ClientSession() as http,
            http.post(setup["url"] + path, json=body, headers=headers) as r,
        ):
            return r.status, r.content_type, await r.read()

    async def scenario():
        bearer = {"Authorization": f"Bearer {KEY}"}
        return await asyncio.gather(
            post("/api/tts_streaming", {"text": TEXT1, "voice": VOICE}, HEADERS),
            post(
                "/v1/audio/speech",
                {"model": "tts-1", "input": TEXT1, "voice": VOICE, "response_format": "pcm"},
                bearer,
            ),
            post("/v1/audio/speech", {"input": TEXT1, "voice": "alloy", "response_format": "flac"}, bearer),
            post("/api/tts_streaming", {"text": TEXT1, "voice": VOICE}, {}),
            post("/api/tts_streaming", {"text": TEXT1}, HEADERS),
            post("/v1/audio/speech", {"input": TEXT1, "response_format": "aiff"}, bearer),
            post("/v1/audio/speech", {"input": TEXT1, "speed": 9}, bearer),
            post("/v1/audio/speech", {"input": TEXT1}, {}),
        )

    wav, pcm, flac, no_key, no_voice, bad_format, bad_speed, unauth = run(scenario())
    assert wav[:2] == (200, "audio/wav")
    assert wav[2][:4] == b"RIFF" and struct.unpack("<I", wav[2][4:8])[0] == 0xFFFFFFFF
    assert wav[2][36:40] == b"data" and struct.unpack("<I", wav[2][40:44])[0] == 0xFFFFFFFF
    assert struct.unpack("<HHI", wav[2][20:28]) == (1, 1, 24000)
    assert np.abs(np.frombuffer(wav[2][44:], "<i2").astype(int) - pcm16).max() <= 1
    assert pcm[0] == 200 and np.abs(np.frombuffer(pcm[2], "<i2").astype(int) - pcm16).max() <= 1
    assert flac[:2] == (200, "audio/flac")
    decoded, rate = sf.read(io.BytesIO(flac[2]), dtype="float32")
    assert rate == 24000 and np.abs(decoded - expected).max() < 1e-3  # "alloy": the default voice
    assert no_key[0] == 401 and no_voice[0] == 422 and unauth[0] == 401
    assert bad_format[0] == 400 and b"response_format" in bad_format[2]
    assert bad_speed[0] == 400 and b"speed" in bad_speed[2]


def test_client_command(setup, tmp_path, capsys):
    from dsm.cli import main

    out = tmp_path / "speech.wav"
    args = ["client", "tts", TEXT1, str(out), "--url", setup["url"], "--api-key", KEY, "--voice", VOICE]
    assert main(args) == 0
    expected = setup["offline"][(TEXT1, VOICE)]
    audio, rate = sf.read(str(out), dtype="float32")
    assert rate == 24000 and len(audio) == len(expected.audio)
    assert np.abs(audio - np.clip(expected.audio, -0.99, 0.99)).max() < 1e-3
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines] == [w.text for w in expected.words]


def test_py_option_types_are_checked(tmp_path):
    """A wrongly typed `py` option stops the server at start-up with the key named, before any model loads."""
    from dsm.errors import DsmError

    for line, message in (
        ("soft_decode = 1", "py.soft_decode: expected true or false"),
        ("temp = true", "py.temp"),
    ):
        config = tmp_path / "bad.toml"
        config.write_text(
            f"""
authorized_ids = ["{KEY}"]

[modules.tts]
type = "Py"
path = "/api/tts_streaming"
batch_size = 1
text_bos_token = 1

[modules.tts.py]
hf_repo = "bundled"
{line}
"""
        )
        with pytest.raises(DsmError, match=message):
            Server(load_config(config)).load()
