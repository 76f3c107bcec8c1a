"""The streaming server over real loopback sockets, against offline transcription of the same audio.

One server (port 0, in a thread) serves the small STT model of `tests/stt_assets.py` through two modules:
`asr` (3 slots, exact kernels, candle `model` table as in Kyutai's configs) and `short` (1 slot, loaded
from the model directory with `hf_repo`, 1 s maximum session). Expected results come from
`Transcriber.transcribe` (exact kernels, batch 1) on the same audio: the server's `Word`/`EndWord` stream
must equal the Rust recipe (`WordStream`) over the offline tokens, and the REST endpoints must equal the
offline transcript itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

aiohttp = pytest.importorskip("aiohttp")
msgpack = pytest.importorskip("msgpack")

from dsm.audio.opus import OpusStreamDecoder, OpusStreamEncoder  # noqa: E402
from dsm.cli import main  # noqa: E402
from dsm.server import BackgroundServer, Server, load_config  # noqa: E402
from dsm.server.formats import render  # noqa: E402
from dsm.stt.timestamps import WordEnded, WordStarted, WordStream  # noqa: E402
from dsm.stt.transcriber import Transcriber  # noqa: E402

FRAME = 1920
DELAY = 6  # asr_delay_in_tokens (stt-1b's)
KEY = "secret-key"
HEADERS = {"kyutai-api-key": KEY}
IDLE_S = 2.5
MAX_MSG = 256 * 1024


def config_text(assets, repo) -> str:
    cfg = assets["cfg"]
    root = assets["root"]
    return f"""
static_dir = "{root}"
log_dir = "$DSM_TEST_LOG_DIR"
instance_name = "test"
authorized_ids = ["{KEY}", "other-key"]

[modules.asr]
type = "BatchedAsr"
path = "/api/asr-streaming"
batch_size = 3
lm_model_file = "{root}/model.safetensors"
text_tokenizer_file = "{root}/tok.model"
audio_tokenizer_file = "{root}/mimi-pytorch-e351c8d8@125.safetensors"
asr_delay_in_tokens = {DELAY}
temperature = 0.0
exact = true
audio_delay_seconds = 0.5
idle_timeout_s = {IDLE_S}
max_message_bytes = {MAX_MSG}
post_slot_wait_s = 60
mimi_config = {{ num_layers = 1 }}

[modules.asr.model]
audio_vocab_size = {cfg["card"] + 1}
text_in_vocab_size = {cfg["text_card"] + 1}
text_out_vocab_size = {cfg["text_card"]}
audio_codebooks = {cfg["n_q"]}

[modules.asr.model.transformer]
d_model = {cfg["dim"]}
num_heads = {cfg["num_heads"]}
num_layers = {cfg["num_layers"]}
dim_feedforward = {4 * cfg["dim"]}
causal = true
context = {cfg["context"]}
max_period = {cfg["max_period"]}
gating = "silu"
norm = "RmsNorm"
positional_embedding = "Rope"

[modules.asr.model.extra_heads]
num_heads = {cfg["extra_heads_num_heads"]}
dim = {cfg["extra_heads_dim"]}

[modules.short]
type = "BatchedAsr"
path = "/api/asr-short"
batch_size = 1
hf_repo = "{repo}"
asr_delay_in_tokens = {DELAY}
max_session_s = 1.0
mimi_config = {{ num_layers = 1 }}
"""


@pytest.fixture(scope="module")
def setup(stt_assets, tmp_path_factory, monkeypatch_module):
    from stt_assets import MIMI_1L, make_repo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model thread and the test's own transcriber share 2 busy cores
    tmp = tmp_path_factory.mktemp("server")
    repo = make_repo(stt_assets, tmp / "repo", prefix=0.0)
    monkeypatch_module.setenv("DSM_TEST_LOG_DIR", str(tmp / "logs"))
    path = tmp / "server.toml"
    path.write_text(config_text(stt_assets, repo))
    server = Server(load_config(path))
    server.load()
    background = BackgroundServer(server)
    url = background.start()
    transcriber = Transcriber.from_checkpoint(repo, mimi_config=MIMI_1L, exact=True)
    audio = {name: sf.read(str(p), dtype="float32")[0] for name, p in stt_assets["audio"].items()}
    encoder = OpusStreamEncoder(24000)
    audio["opus"] = encoder.encode(audio["a"]) + encoder.encode(np.zeros(FRAME * 4, np.float32))
    audio["opus decoded"] = OpusStreamDecoder(24000).decode(audio["opus"])  # 20 ms packets, not 1920 samples
    audio["b + frame"] = np.concatenate([audio["b"], np.zeros(-len(audio["b"]) % FRAME + FRAME, np.float32)])
    # Offline transcripts of everything the tests send, in one batch (equal to one by one in exact mode).
    keys = ["a", "b", "c", "opus decoded", "b + frame"]
    offline = dict(zip(keys, transcriber.transcribe_batch([audio[k] for k in keys]), strict=True))
    yield {
        "url": url,
        "server": server,
        "tr": transcriber,
        "audio": audio,
        "offline": offline,
        "tmp": tmp,
        "config": path,
    }
    background.stop()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def rust_events(tr: Transcriber, tokens: list[int]) -> list[dict]:
    """The Word/EndWord messages of moshi-server's recipe over a token stream."""
    out = []
    for e in WordStream(DELAY, tr.tokenizer).push_many(tokens):
        if isinstance(e, WordStarted):
            out.append({"type": "Word", "text": e.text, "start_time": e.start_time})
        elif isinstance(e, WordEnded):
            out.append({"type": "EndWord", "stop_time": e.stop_time})
    return out


def audio_msg(pcm) -> bytes:
    return msgpack.packb(
        {"type": "Audio", "pcm": np.asarray(pcm, np.float32).tolist()}, use_single_float=True
    )


def ws_url(setup, path="/api/asr-streaming", query="") -> str:
    return setup["url"].replace("http://", "ws://") + path + query


def run(coro):
    return asyncio.run(coro)


async def stream_session(
    setup,
    pcm: np.ndarray | None,
    *,
    chunks=None,
    opus: bytes | None = None,
    pause: asyncio.Event | None = None,
):
    """One client as the tests need it: Ready, the audio, one frame of silence, a marker, 6 frames of silence
    (exactly the offline recipe's 7 suffix frames); all messages up to the marker's echo."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(setup), headers=HEADERS) as ws:
        first = msgpack.unpackb((await ws.receive(timeout=30)).data)
        assert first == {"type": "Ready"}
        messages = [first]

        async def receive():
            async for m in ws:
                d = msgpack.unpackb(m.data)
                if d == {"type": "Marker", "id": -1}:
                    continue
                messages.append(d)
                if d["type"] in ("Marker", "Error"):
                    return

        reader = asyncio.create_task(receive())
        if opus is not None:
            for i in range(0, len(opus), 700):
                await ws.send_bytes(
                    msgpack.packb({"type": "OggOpus", "data": opus[i : i + 700]}, use_bin_type=True)
                )
            total = len(pcm)
        else:
            sizes = chunks or [FRAME] * (len(pcm) // FRAME + 1)
            pos, half = 0, len(pcm) // 2
            for n in sizes:
                if pos >= len(pcm):
                    break
                if pause is not None and pos <= half < pos + n:
                    while not pause.is_set():  # markers keep the session from idling out, audio unchanged
                        await ws.send_bytes(msgpack.packb({"type": "Marker", "id": -1}))
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(pause.wait(), 0.5)
                await ws.send_bytes(audio_msg(pcm[pos : pos + n]))
                pos += n
            total = len(pcm)
        await ws.send_bytes(audio_msg(np.zeros(-total % FRAME + FRAME)))
        await ws.send_bytes(msgpack.packb({"type": "Marker", "id": 42}))
        for _ in range(DELAY):
            await ws.send_bytes(audio_msg(np.zeros(FRAME)))
        await asyncio.wait_for(reader, 120)
    return messages


def check_session(setup, messages, key):
    expected = setup["offline"][key]
    words = [m for m in messages if m["type"] in ("Word", "EndWord")]
    others = [m for m in messages if m["type"] not in ("Word", "EndWord", "Step")]
    assert words == rust_events(setup["tr"], expected.tokens), others
    assert sum(m["type"] == "Word" for m in words) >= 2  # the random model writes words on this audio
    steps = [m for m in messages if m["type"] == "Step"]
    assert len(steps) == len(expected.tokens)  # one Step per frame
    assert all(len(s["prs"]) == 4 and 0 <= s["prs"][2] <= 1 for s in steps)
    assert messages[-1] == {"type": "Marker", "id": 42}


async def get_json(setup, path: str, **kw):
    async with aiohttp.ClientSession() as http, http.get(setup["url"] + path, **kw) as r:
        return r.status, await r.json(content_type=None)


def used_slots(setup) -> int:
    status, info = run(get_json(setup, "/api/modules_info"))
    return int(next(m for m in info if m["path"] == "/api/asr-streaming")["used_slots"])


def wait_free(setup, timeout=10.0):
    end = time.monotonic() + timeout
    while used_slots(setup) and time.monotonic() < end:
        time.sleep(0.05)
    assert used_slots(setup) == 0


# -- streaming ---------------------------------------------------------------------------------------------


def test_full_batch_of_sessions_each_get_their_own_words(setup):
    audio = setup["audio"]
    rng = np.random.default_rng(0)
    random_chunks = [int(n) for n in rng.integers(1, 5000, size=100)]

    module = setup["server"].services[0].loop

    async def scenario():
        started = asyncio.Event()

        async def staggered(name, delay, chunks=None):
            await asyncio.sleep(delay)
            return await stream_session(setup, audio[name], chunks=chunks, pause=started)

        tasks = [
            asyncio.create_task(staggered("a", 0.0)),
            asyncio.create_task(staggered("b", 0.3, random_chunks)),
            asyncio.create_task(staggered("c", 0.6)),
        ]
        while module.used_slots < 3:
            await asyncio.sleep(0.05)
        # All slots busy: one more client gets the documented error and a close frame.
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(setup), headers=HEADERS) as ws:
            msg = await ws.receive(timeout=10)
            assert msgpack.unpackb(msg.data) == {"type": "Error", "message": "no free channels"}
            assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
        started.set()
        return await asyncio.gather(*tasks)

    results = run(scenario())
    for name, messages in zip("abc", results, strict=True):
        check_session(setup, messages, name)
    wait_free(setup)


def test_bad_clients_end_alone_and_free_their_slot(setup):
    """Each bad client gets an Error and a close frame; the good PCM and Ogg/Opus sessions finish exactly."""
    audio = setup["audio"]

    bad_messages = {  # name: (frame, text of the Error, close code)
        "lone zero byte": (b"\x00", "msgpack map", 1003),
        "not msgpack": (b"\xc1\xc1", "not valid msgpack", 1003),
        "wrong field type": (msgpack.packb({"type": "Audio", "pcm": "loud"}), "array of numbers", 1003),
        "missing field": (msgpack.packb({"type": "Marker"}), "without 'id'", 1003),
        "unknown type": (msgpack.packb({"type": "Shout", "pcm": []}), "unknown message type", 1003),
        "bad opus": (msgpack.packb({"type": "OggOpus", "data": list(b"OggS" + bytes(60))}), "Ogg/Opus", 1003),
        "oversized": (audio_msg(np.zeros(MAX_MSG // 4)), "message too big", 1009),
    }
    module = setup["server"].services[0].loop

    async def slot_free():
        while module.used_slots == module.batch_size:
            await asyncio.sleep(0.02)

    async def bad_client(name):
        data, expected, code = bad_messages[name]
        await slot_free()
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(setup), headers=HEADERS) as ws:
            assert msgpack.unpackb((await ws.receive(timeout=30)).data) == {"type": "Ready"}
            await ws.send_bytes(audio_msg(np.zeros(FRAME)))
            await ws.send_bytes(data)
            msg = await ws.receive(timeout=30)
            assert msg.type == aiohttp.WSMsgType.BINARY, name
            err = msgpack.unpackb(msg.data)
            assert err["type"] == "Error" and expected in err["message"], (name, err)
            close = await ws.receive(timeout=30)
            assert (close.type, close.data) == (aiohttp.WSMsgType.CLOSE, code), name

    async def vanishing_client():
        await slot_free()
        reader, writer = await asyncio.open_connection("127.0.0.1", setup["server"].port)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        writer.write(
            (
                f"GET /api/asr-streaming HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nkyutai-api-key: {KEY}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        assert b"101" in await reader.readline()
        before = module.used_slots
        writer.transport.abort()  # gone without a close frame
        while module.used_slots == before:
            await asyncio.sleep(0.02)

    async def idle_client():
        await slot_free()
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(setup), headers=HEADERS) as ws:
            assert msgpack.unpackb((await ws.receive(timeout=30)).data) == {"type": "Ready"}
            start = time.monotonic()
            err = msgpack.unpackb((await ws.receive(timeout=30)).data)
            assert err["type"] == "Error" and "idle" in err["message"]
            assert IDLE_S - 0.5 <= time.monotonic() - start <= IDLE_S + 5
            assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE

    async def scenario():
        done = asyncio.Event()
        good = asyncio.create_task(stream_session(setup, audio["b"], pause=done))
        good_opus = asyncio.create_task(stream_session(setup, audio["opus decoded"], opus=audio["opus"]))
        for name in bad_messages:  # one slot left: the bad clients take it in turn
            await bad_client(name)
            await asyncio.sleep(0.05)
        await vanishing_client()
        await idle_client()
        done.set()
        return await good, await good_opus

    messages, opus_messages = run(scenario())
    check_session(setup, messages, "b")
    check_session(setup, opus_messages, "opus decoded")
    wait_free(setup)
    _, _ = run(get_json(setup, "/api/build_info"))
    metrics = run(text(setup, "/metrics"))
    for kind in ("protocol", "opus", "oversized", "idle_timeout", "disconnect", "no_free_channels"):
        assert f'dsm_session_errors{{handler="all",kind="{kind}"}}' in metrics, kind


def test_maximum_session_duration(setup):
    """The `short` module (loaded with hf_repo) ends a session streaming in real time after 1 s."""

    async def scenario():
        url = ws_url(setup, "/api/asr-short")
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=HEADERS) as ws:
            assert msgpack.unpackb((await ws.receive(timeout=30)).data) == {"type": "Ready"}
            start = time.monotonic()

            async def feed():
                while not ws.closed:
                    await ws.send_bytes(audio_msg(np.zeros(FRAME)))
                    await asyncio.sleep(0.08)

            feeder = asyncio.create_task(feed())
            async for msg in ws:
                data = msgpack.unpackb(msg.data)
                if data["type"] == "Error":
                    assert "maximum session duration" in data["message"]
                    assert 0.9 <= time.monotonic() - start <= 10
                    break
            else:
                raise AssertionError("closed without an Error")
            assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    run(scenario())


# -- authentication --------------------------------------------------------------------------------------


def test_authentication(setup, tmp_path):
    async def ws_status(query="", headers=None):
        try:
            url = ws_url(setup, query=query)
            async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers or {}) as ws:
                return 101, msgpack.unpackb((await ws.receive(timeout=30)).data)
        except aiohttp.WSServerHandshakeError as e:
            return e.status, None

    async def post_status(path, headers=None):
        async with (
            aiohttp.ClientSession() as http,
            http.post(setup["url"] + path, data=b"x", headers=headers or {}) as r,
        ):
            return r.status, await r.read()

    async def scenario():
        assert await ws_status() == (401, None)
        assert await ws_status(headers={"kyutai-api-key": "wrong"}) == (401, None)
        assert await ws_status("?auth_id=wrong") == (401, None)
        # A present but invalid header wins over a valid auth_id, as in the reference.
        assert await ws_status(f"?auth_id={KEY}", {"kyutai-api-key": "wrong"}) == (401, None)
        assert await ws_status(f"?auth_id={KEY}") == (101, {"type": "Ready"})
        assert await ws_status(headers={"kyutai-api-key": "other-key"}) == (101, {"type": "Ready"})
        assert await post_status(f"/api/asr-streaming?auth_id={KEY}") == (401, b"")  # POST: header only
        assert (await post_status("/v1/audio/transcriptions"))[0] == 401
        assert (await post_status("/v1/audio/transcriptions", {"Authorization": "Bearer nope"}))[0] == 401
        for path in ("/api/build_info", "/metrics", "/health", "/api/modules_info"):
            async with aiohttp.ClientSession() as http, http.get(setup["url"] + path) as r:
                assert r.status == 200, path

    run(scenario())
    wait_free(setup)


# -- REST ------------------------------------------------------------------------------------------------


async def text(setup, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(setup["url"] + path) as r:
        assert r.status == 200
        return await r.text()


async def transcribe_rest(setup, wav_bytes: bytes, fmt: str, granularities=(), auth=None):
    form = aiohttp.FormData()
    form.add_field("file", wav_bytes, filename="speech.wav", content_type="audio/wav")
    form.add_field("model", "whisper-1")
    form.add_field("response_format", fmt)
    for g in granularities:
        form.add_field("timestamp_granularities[]", g)
    headers = auth or {"Authorization": f"Bearer {KEY}"}
    url = setup["url"] + "/v1/audio/transcriptions"
    async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers) as r:
        return r.status, r.content_type, await r.read()


SRT_CUE = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+)$")
VTT_CUE = re.compile(r"^(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)\n(.+)$")


def _seconds(stamp: str) -> float:
    h, m, s = stamp.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_rest_endpoints_and_client_command(setup, stt_assets, capsys):
    """The REST routes, and `dsm client stt` streaming the same file meanwhile (sharing the slots)."""
    wav = setup["audio"]["b"]
    path = stt_assets["audio"]["b"]
    data = path.read_bytes()
    expected = setup["offline"]["b"]
    assert len(expected.words) >= 2
    client_args = ["client", "stt", str(path), "--url", setup["url"], "--rtf", "1000", "--lead-silence", "0"]
    module = setup["server"].services[0].loop

    async def scenario():
        client = asyncio.get_running_loop().run_in_executor(
            None, main, [*client_args, "--api-key", KEY, "--json"]
        )
        while module.used_slots < 1:  # a WebSocket takes a free slot or fails; POSTs wait for one
            await asyncio.sleep(0.01)
        formats = [("verbose_json", ("word", "segment")), ("srt", ()), ("vtt", ())]
        calls = [transcribe_rest(setup, data, f, g) for f, g in formats]
        calls.append(post_raw())
        return await asyncio.gather(*calls), await client

    async def post_raw():
        url = setup["url"] + "/api/asr-streaming"
        async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=HEADERS) as r:
            return r.status, r.content_type, await r.read()

    (vj, srt, vtt, raw), client_code = run(scenario())
    assert vj[:2] == (200, "application/json")
    body = json.loads(vj[2])
    assert body["text"] == expected.text and body["task"] == "transcribe"
    assert body["duration"] == pytest.approx(len(wav) / 24000)
    assert [(w["word"], w["start"], w["end"]) for w in body["words"]] == [
        (w.text, w.start, w.end) for w in expected.words
    ]
    assert [w for s in body["segments"] for w in s["text"].split()] == [w.text for w in expected.words]
    # json and text: the same transcript, other renderings (each format costs a model run here).
    for fmt, want in (("json", {"text": expected.text}), ("text", expected.text + "\n")):
        out, _ = render(fmt, body["text"], expected.words, body["duration"])
        assert out == want

    assert srt[0] == 200
    cues = srt[2].decode().strip().split("\n\n")
    assert cues and all(SRT_CUE.match(c) for c in cues)
    parsed = [SRT_CUE.match(c).groups() for c in cues]
    assert [int(p[0]) for p in parsed] == list(range(1, len(parsed) + 1))
    assert all(_seconds(p[1]) <= _seconds(p[2]) for p in parsed)
    assert " ".join(p[3] for p in parsed).split() == [w.text for w in expected.words]

    assert vtt[0] == 200 and vtt[1] == "text/vtt"
    head, *vcues = vtt[2].decode().strip().split("\n\n")
    assert head == "WEBVTT" and vcues and all(VTT_CUE.match(c) for c in vcues)
    assert [VTT_CUE.match(c).group(3) for c in vcues] == [p[3] for p in parsed]

    # moshi-server's POST: the Rust recipe over the audio and 8 frames of silence (no prefix).
    assert raw[0] == 200
    tokens = setup["offline"]["b + frame"].tokens
    events = rust_events(setup["tr"], tokens)
    stream = WordStream(DELAY, setup["tr"].tokenizer)
    stream.push_many(tokens)
    tail = stream.flush(stop_time=(len(tokens) - DELAY) / 12.5)
    for e in tail:
        events.append(
            {"type": "Word", "text": e.text, "start_time": e.start_time}
            if isinstance(e, WordStarted)
            else {"type": "EndWord", "stop_time": e.stop_time}
        )
    assert json.loads(raw[2]) == events

    # dsm client stt: silence follows the audio until the marker is back, so the offline words come first.
    assert client_code == 0
    words = json.loads(capsys.readouterr().out)
    spoken = [m for m in rust_events(setup["tr"], expected.tokens) if m["type"] == "Word"]
    got = [(w["text"], w["start"]) for w in words]
    assert got[: len(spoken)] == [(m["text"], m["start_time"]) for m in spoken]
    assert all(w["start"] <= w["stop"] for w in words)
    assert main([*client_args, "--api-key", "wrong"]) == 2
    assert "401" in capsys.readouterr().err
    wait_free(setup)


def test_rest_errors(setup):
    async def scenario():
        status, _, body = await transcribe_rest(setup, b"definitely not audio" * 20, "json")
        assert status == 400 and "file" == json.loads(body)["error"]["param"]
        status, _, body = await transcribe_rest(setup, b"RIFF", "yaml")
        assert status == 400 and json.loads(body)["error"]["param"] == "response_format"
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("model", "whisper-1")
            async with http.post(setup["url"] + "/v1/audio/transcriptions", data=form, headers=HEADERS) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == "file"

    run(scenario())


# -- operations -------------------------------------------------------------------------------------------


def test_metrics_info_and_logs(setup):
    metrics = run(text(setup, "/metrics"))
    assert "# TYPE asr_connect counter" in metrics and 'asr_connect{handler="all"}' in metrics
    assert "# TYPE asr_open_channels gauge" in metrics
    assert re.search(r'^asr_model_step_duration_bucket\{le="0.08"\} \d+$', metrics, re.M)
    assert re.search(r'^asr_connection_num_steps_bucket\{le="\+Inf"\} [1-9]\d*$', metrics, re.M)
    assert "_total" not in metrics  # moshi-server's names
    status, info = run(get_json(setup, "/api/build_info"))
    assert status == 200 and all(isinstance(v, str) for v in info.values()) and "git_hash" in info
    status, modules = run(get_json(setup, "/api/modules_info"))
    assert [m["path"] for m in modules] == ["/api/asr-streaming", "/api/asr-short"]
    assert all(isinstance(v, str) for m in modules for v in m.values())
    assert modules[0]["total_slots"] == "3"
    assert run(text(setup, "/tok.vocab"))  # static_dir fallback (any file in it)

    async def missing():
        async with aiohttp.ClientSession() as http, http.get(setup["url"] + "/../../etc/passwd") as r:
            return r.status

    assert run(missing()) == 404


def test_serve_command_opens_port_after_loading(setup):
    """`dsm serve` in a subprocess (a 1-module config): it listens only once the model is loaded and warmed
    up, logs structured events to stderr and to log_dir, and stops on SIGTERM."""
    text = setup["config"].read_text()
    config = setup["tmp"] / "short.toml"
    config.write_text(text[: text.index("[modules.asr]")] + text[text.index("[modules.short]") :])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-c", "from dsm.cli import main; raise SystemExit(main())", "serve"]
    command += ["--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--log-json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"dsm serve: listening on http://127.0.0.1:{port}"
        status, _ = run(get_json(setup | {"url": f"http://127.0.0.1:{port}"}, "/api/build_info"))
        assert status == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    events = [json.loads(x)["event"] for x in err.splitlines() if x.startswith("{")]
    assert events.index("module_ready") < events.index("listening") < events.index("shutdown")
    assert proc.returncode == 0
    logs = list((setup["tmp"] / "logs").glob("log.test.*"))
    assert logs and "listening" in logs[0].read_text()
