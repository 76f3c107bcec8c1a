"""Streaming server load: concurrent real-time STT streams, and TTS time to first audio, on `dsm serve`.

A server runs in this process (one module, batch size = the number of sessions tried, fast kernels) on a
model with random weights; the clients run in a separate process and speak the WebSocket protocol over
loopback. `--arch small` is a 1-layer, dim-128 LM (about the test models: the full Mimi dominates the
cost), `--arch bundled` the bundled models of `configs/bundled/` (6-layer, dim-256 LM and their small codec:
8 codebooks, 16 SEANet filters), `--arch 1b` the real depth and width of stt-1b-en_fr / tts-1.6b-en_fr
(`--layers` reduces it). Mimi is Kyutai's full codec in float32, except for `bundled`.

STT (`--mode stt`): each client sends a speech-like signal as 1920-sample `Audio` messages paced at real
time (80 ms apart, start times spread over one frame) for `--seconds`. Reported per number of streams N:

* frame latency: from sending a frame to receiving the results of the step that processed it (the
  server's processing delay, without the model's text delay), p50 / p99 / max. It is timed with markers:
  frame k is followed by `Marker{k}`, which comes back with the results of frame k + 6
  (`asr_delay_in_tokens`), so models without VAD `Step` messages are timed too;
* word latency: from sending the frame where a word starts (its `start_time`) to receiving its `Word`
  (includes the word's duration and the model's 0.48 s text delay), p50 / p99;
* mean step time, mean active slots per step, audio seconds processed per second. N streams are
  *sustained* when every frame was processed and the p99 frame latency is at most `--max-p99` (0.5 s).

Both modes first time 6 full-batch steps; the fastest is the least disturbed by other processes, so
"fastest full step <= 80 ms" estimates how many streams an idle machine would sustain.

TTS (`--mode tts`): N clients each send a `--words`-word text (one `Text` per word, then `Eos`) at the
same moment. Reported: time to first audio (from `Eos` to the first `Audio`), p50 / max; the worst lag
of a frame behind real-time playback started at the first audio; generation speed per stream. N
sessions are *sustained* when no frame lags playback by more than `--max-p99`.

    python benchmarks/server_load.py [--mode stt|tts] [--arch small|1b] [--layers N]
        [--dtype float32|bfloat16] [--quantize fp16|int8|w8a8|int4] [--streams 1 2 4 8 16]
        [--seconds 20] [--words 20] [--n-q 24] [--threads 2] [--max-p99 0.5] [--stop-early] [--json PATH]

Other processes on the machine distort CPU figures; the CPU they took during each run (in cores) is
printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import PieceTokenizer, machine_info, machine_line, print_table, write_json

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from dsm.codec import Mimi, MimiConfig  # noqa: E402
from dsm.lm import LMConfig  # noqa: E402
from dsm.lm.loader import build_lm  # noqa: E402
from dsm.nn.quant import KINDS  # noqa: E402
from dsm.server.app import BackgroundServer, Server  # noqa: E402
from dsm.server.asr_model import AsrModel  # noqa: E402
from dsm.server.asr_routes import AsrService  # noqa: E402
from dsm.server.config import AsrModuleConfig, ServerConfig, TtsModuleConfig  # noqa: E402
from dsm.server.tts_routes import TtsService  # noqa: E402
from dsm.tts.synthesizer import Synthesizer  # noqa: E402

FRAME = 1920
SR = 24000
KEY = "bench"
ASR_DELAY = 6  # the module's asr_delay_in_tokens: a marker comes back that many frames after its audio
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["stt", "tts"], default="stt")
    p.add_argument("--arch", choices=["small", "bundled", "1b"], default="small")
    p.add_argument("--layers", type=int, default=None, help="temporal layers (default: the architecture's)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--quantize", choices=KINDS, help="LM products on converted weights (dsm.nn.quant)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--seconds", type=float, default=20.0, help="STT: audio per stream")
    p.add_argument("--words", type=int, default=20, help="TTS: words per session")
    p.add_argument("--n-q", type=int, default=24, help="TTS: audio codebooks generated (moshi-server: 24)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    p.add_argument("--max-p99", type=float, default=0.5, help="p99 frame latency (s) to count as sustained")
    p.add_argument("--stop-early", action="store_true", help="stop after the first N that falls behind")
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def bundled(kind: str) -> tuple[dict[str, Any], Mimi, dict[str, Any]]:
    """The bundled model's LM config, a random codec of its architecture, and the training config."""
    import tomllib

    train = tomllib.loads((REPO / "configs" / "bundled" / f"{kind}.toml").read_text())
    mimi = random_mimi(MimiConfig.from_dict(train["model"]["mimi_config"]))
    return dict(train["model"]["arch"]), mimi, train


def build_model(args: argparse.Namespace) -> AsrModel:
    import lm_configs

    if args.arch == "bundled":
        cfg, mimi, _ = bundled("stt")
        if args.layers:
            cfg["num_layers"] = args.layers
        lm = build_lm(LMConfig.from_kyutai(cfg), dtype=DTYPES[args.dtype]).requires_grad_(False)
        params = sum(p.numel() for p in lm.parameters()) / 1e6
        desc = f"bundled STT ({cfg['num_layers']} layers, dim {cfg['dim']}, {params:.0f} M params), its codec"
        return AsrModel(mimi, lm, PieceTokenizer(), 6, 0.0, 0.48, description=desc, quantize=args.quantize)
    cfg = lm_configs.reduced(lm_configs.STT_1B, layers=args.layers or 16)
    if args.arch == "small":  # noqa: SIM114
        cfg.update(dim=128, num_heads=2, num_layers=args.layers or 1, context=100)
    torch.manual_seed(0)
    lm = build_lm(LMConfig.from_kyutai(cfg), dtype=DTYPES[args.dtype]).requires_grad_(False)
    with torch.no_grad():  # frequent boundaries (0) and padding (3), as a trained model writes
        lm.text_linear.weight[0] *= 3.0
        lm.text_linear.weight[3] *= 3.5
    mimi = random_mimi()
    mimi.set_num_codebooks(32)
    params = sum(p.numel() for p in lm.parameters()) / 1e6
    desc = (
        f"{args.arch} LM ({cfg['num_layers']} layers, dim {cfg['dim']}, {params:.0f} M params, {args.dtype})"
    )
    if args.quantize:
        desc += f", {args.quantize} products"
    return AsrModel(mimi, lm, PieceTokenizer(), 6, 0.0, 0.5, description=desc, quantize=args.quantize)


def random_mimi(config: MimiConfig | None = None) -> Mimi:
    mimi = Mimi(config or MimiConfig()).eval().requires_grad_(False)
    with torch.no_grad():
        for name, buf in mimi.named_buffers():
            if name.endswith("embedding_sum"):
                buf.normal_()
    return mimi


def build_tts(args: argparse.Namespace) -> tuple[Synthesizer, str]:
    """A TTS synthesizer with random weights (tts-1.6b-en_fr's architecture, or a small one)."""
    import lm_configs

    if args.arch == "bundled":
        cfg, mimi, train = bundled("tts")
        if args.layers:
            cfg["num_layers"] = args.layers
        lm = build_lm(LMConfig.from_kyutai(cfg), dtype=DTYPES[args.dtype]).requires_grad_(False)
        tts = {k: train["tts"][k] for k in ("audio_delay", "second_stream_ahead", "max_speakers")}
        synth = Synthesizer(
            mimi, lm, PieceTokenizer(), tts, n_q=min(args.n_q, cfg["dep_q"]), quantize=args.quantize
        )
        params = sum(p.numel() for p in lm.parameters()) / 1e6
        desc = (
            f"bundled TTS ({cfg['num_layers']} layers, dim {cfg['dim']}, {params:.0f} M params, real CFG) "
            f"+ bundled codec, n_q {synth.n_q}"
        )
        return synth, desc
    cfg = lm_configs.reduced(lm_configs.TTS_1B6, layers=args.layers or 16, depformer_layers=4)
    if args.arch == "small":
        cfg = lm_configs.reduced(lm_configs.TTS_1B6, layers=args.layers or 1, depformer_layers=1)
        cfg.update(
            dim=128,
            num_heads=2,
            context=100,
            depformer_dim=64,
            depformer_num_heads=2,
            depformer_dim_feedforward=96,
            depformer_low_rank_embeddings=16,
        )
        cfg["conditioners"]["control"]["lut"]["dim"] = 32
    torch.manual_seed(0)
    lm = build_lm(LMConfig.from_kyutai(cfg), dtype=DTYPES[args.dtype]).requires_grad_(False)
    mimi = random_mimi()
    mimi.set_num_codebooks(32)
    synth = Synthesizer(mimi, lm, PieceTokenizer(), cfg["tts_config"], n_q=args.n_q, quantize=args.quantize)
    params = sum(p.numel() for p in lm.parameters()) / 1e6
    desc = (
        f"{args.arch} TTS LM ({cfg['num_layers']} layers, dim {cfg['dim']}, depformer "
        f"{cfg['depformer_num_layers']} layers, {params:.0f} M params, {args.dtype}), n_q {args.n_q}"
    )
    return synth, desc


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Gliding harmonics with an amplitude envelope, plus noise (as tests/oracle.test_signal)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 100 + 150 * rng.random()
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.3 * np.sin(2 * np.pi * 0.7 * t + 6 * rng.random())) / SR)
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.clip(np.sin(2 * np.pi * 3.1 * t + 6 * rng.random()), 0, None)
    return (0.2 * voiced * envelope + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


# -- clients (separate process) -----------------------------------------------------------------------------


async def _client(url: str, frames: list[bytes], offset: float, t0: float) -> dict[str, Any]:
    import aiohttp
    import msgpack

    sent = [0.0] * len(frames)
    frame_lat: list[float] = []
    word_lat: list[float] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers={"kyutai-api-key": KEY}) as ws:
        ready = msgpack.unpackb((await ws.receive()).data)
        if ready.get("type") != "Ready":
            return {"error": str(ready)}
        done = asyncio.Event()

        timed = len(frames) - ASR_DELAY

        async def receive() -> None:
            async for m in ws:
                msg = msgpack.unpackb(m.data)
                now = time.monotonic()
                if msg["type"] == "Marker":  # Marker{k} comes back with the step of frame k + the delay
                    frame_lat.append(now - sent[msg["id"] + ASR_DELAY])
                    if len(frame_lat) == timed:
                        done.set()
                        return
                elif msg["type"] == "Word":
                    k = min(int(msg["start_time"] * 12.5), len(frames) - 1)
                    word_lat.append(now - sent[k])

        reader = asyncio.create_task(receive())
        start = t0 + offset
        for k, data in enumerate(frames):
            await asyncio.sleep(max(0.0, start + (k + 1) * FRAME / SR - time.monotonic()))
            sent[k] = time.monotonic()
            await ws.send_bytes(data)
            if k < timed:
                await ws.send_bytes(msgpack.packb({"type": "Marker", "id": k}))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=30)
        reader.cancel()
    return {"frame": frame_lat, "word": word_lat, "frames": timed, "elapsed": time.monotonic() - start}


def _run_clients(url: str, n: int, seconds: float, out: Any) -> None:
    import msgpack

    async def main() -> list[dict[str, Any]]:
        packed = []
        for i in range(n):
            wav = speech_like(seconds, seed=i)
            packed.append(
                [
                    msgpack.packb(
                        {"type": "Audio", "pcm": wav[k : k + FRAME].tolist()}, use_single_float=True
                    )
                    for k in range(0, len(wav) - FRAME + 1, FRAME)
                ]
            )
        t0 = time.monotonic() + 0.5
        rng = np.random.default_rng(n)
        tasks = [_client(url, packed[i], float(rng.random()) * FRAME / SR, t0) for i in range(n)]
        return await asyncio.gather(*tasks)

    out.put(asyncio.run(main()))


async def _tts_client(url: str, words: list[str], t0: float) -> dict[str, Any]:
    import aiohttp
    import msgpack

    arrivals: list[float] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers={"kyutai-api-key": KEY}) as ws:
        ready = msgpack.unpackb((await ws.receive()).data)
        if ready.get("type") != "Ready":
            return {"error": str(ready)}
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        for word in words:
            await ws.send_bytes(msgpack.packb({"type": "Text", "text": word}))
        await ws.send_bytes(msgpack.packb({"type": "Eos"}))
        sent = time.monotonic()
        async for m in ws:
            if msgpack.unpackb(m.data)["type"] == "Audio":
                arrivals.append(time.monotonic() - sent)
    return {"arrivals": arrivals}


def _run_tts_clients(url: str, n: int, words: int, out: Any) -> None:
    async def main() -> list[dict[str, Any]]:
        t0 = time.monotonic() + 1.0
        texts = [[f"w{4 + (i * 7 + k) % 50}" for k in range(words)] for i in range(n)]
        return await asyncio.gather(*[_tts_client(url, texts[i], t0) for i in range(n)])

    out.put(asyncio.run(main()))


def run_tts_load(synth: Synthesizer, n: int, args: argparse.Namespace) -> dict[str, Any]:
    cfg = TtsModuleConfig(
        name="tts", path="/api/tts_streaming", batch_size=n, text_tokenizer_file=None, text_bos_token=1
    )
    server = Server(ServerConfig(authorized_ids=frozenset({KEY})))
    voice = torch.randn(20, synth.voice_dim, generator=torch.Generator().manual_seed(1))
    service = TtsService(cfg, synth, voice, server.ctx)
    full_step = _full_steps(service.loop)
    server.services = [service]
    background = BackgroundServer(server)
    url = background.start().replace("http://", "ws://") + "/api/tts_streaming?format=PcmMessagePack"
    results, wall, other = _with_clients(_run_tts_clients, (url, n, args.words))
    steps, step_s = service.loop.m_step.count, service.loop.m_step.sum
    background.stop()
    errors = [r["error"] for r in results if "error" in r]
    firsts = sorted(r["arrivals"][0] for r in results if r.get("arrivals"))
    lags = [
        max(t - (a[0] + k * FRAME / SR) for k, t in enumerate(a))
        for a in (r.get("arrivals") for r in results)
        if a
    ]
    speed = [
        len(a) * FRAME / SR / (a[-1] - a[0])
        for a in (r.get("arrivals") for r in results)
        if a and a[-1] > a[0]
    ]
    row = {
        "streams": n,
        "first_audio_p50_s": firsts[len(firsts) // 2] if firsts else None,
        "first_audio_max_s": firsts[-1] if firsts else None,
        "playback_lag_max_s": max(lags) if lags else None,
        "speed_x_realtime_min": min(speed) if speed else None,
        "frames": sum(len(r.get("arrivals", [])) for r in results),
        "step_ms_mean": 1000 * step_s / steps if steps else None,
        "full_step_ms_min": full_step,
        "client_errors": errors,
        "other_cpu_cores": other,
    }
    row["sustained"] = not errors and len(firsts) == n and max(lags) <= args.max_p99
    return row


def _full_steps(loop: Any, repeats: int = 6) -> float:
    """Warm the module up; the fastest of `repeats` full-batch steps, in ms (the least disturbed by other
    processes: an estimate of the step time on an idle machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loop.warmup(steps=1)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def _with_clients(target: Any, client_args: tuple) -> tuple[list[dict[str, Any]], float, float]:
    """Run `target(*client_args, queue)` in a fresh process; (its results, wall seconds, other CPU cores)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*client_args, queue))
    own0, busy0 = _cpu_times()
    wall0 = time.monotonic()
    proc.start()
    results = queue.get()
    proc.join()
    wall = time.monotonic() - wall0
    own1, busy1 = _cpu_times()
    return results, wall, max(0.0, (busy1 - busy0) - (own1 - own0)) / wall


def _cpu_times() -> tuple[float, float]:
    """(CPU seconds of this process and its finished children, the whole machine's busy CPU seconds)."""
    own = sum(os.times()[:4])
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    return own, busy


def run_load(model: AsrModel, n: int, args: argparse.Namespace) -> dict[str, Any]:
    cfg = AsrModuleConfig(name="asr", path="/api/asr-streaming", batch_size=n, asr_delay_in_tokens=6)
    server = Server(ServerConfig(authorized_ids=frozenset({KEY})))
    service = AsrService(cfg, model, server.ctx)
    full_step = _full_steps(service.loop)
    server.services = [service]
    background = BackgroundServer(server)
    url = background.start().replace("http://", "ws://") + "/api/asr-streaming"
    steps0, step_s0 = service.loop.m_step.count, service.loop.m_step.sum
    frames0 = service.loop.frames_processed
    results, wall, other = _with_clients(_run_clients, (url, n, args.seconds))
    steps = service.loop.m_step.count - steps0
    step_s = service.loop.m_step.sum - step_s0
    frames = service.loop.frames_processed - frames0
    background.stop()
    errors = [r["error"] for r in results if "error" in r]
    frame_lat = sorted(x for r in results if "frame" in r for x in r["frame"])
    word_lat = sorted(x for r in results if "word" in r for x in r["word"])
    expected = sum(r.get("frames", 0) for r in results)

    def q(values: list[float], p: float) -> float | None:
        return values[min(len(values) - 1, int(p * len(values)))] if values else None

    p99 = q(frame_lat, 0.99)
    row = {
        "streams": n,
        "frames_expected": expected,
        "frames_processed": len(frame_lat),
        "frame_latency_p50_s": q(frame_lat, 0.5),
        "frame_latency_p99_s": p99,
        "frame_latency_max_s": frame_lat[-1] if frame_lat else None,
        "word_latency_p50_s": q(word_lat, 0.5),
        "word_latency_p99_s": q(word_lat, 0.99),
        "words": len(word_lat),
        "step_ms_mean": 1000 * step_s / steps if steps else None,
        "full_step_ms_min": full_step,
        "active_slots_mean": frames / steps if steps else None,
        # audio stepped per second of streaming (client start to its last result), over all streams
        "audio_s_per_s": frames * FRAME / SR / max((r.get("elapsed", wall) for r in results), default=wall),
        "client_errors": errors,
        "other_cpu_cores": other,  # CPU taken by other processes during the run, in cores
    }
    row["sustained"] = not errors and len(frame_lat) == expected and p99 is not None and p99 <= args.max_p99
    return row


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def stt_table(rows: list[dict[str, Any]]) -> None:
    headers = [
        "streams",
        "frames",
        "frame p50",
        "frame p99",
        "word p50",
        "word p99",
        "step ms",
        "full step min",
        "active",
        "audio s/s",
        "other CPU",
        "sustained",
    ]
    print_table(
        headers,
        [
            [
                str(r["streams"]),
                f"{r['frames_processed']}/{r['frames_expected']}",
                fmt_s(r["frame_latency_p50_s"]),
                fmt_s(r["frame_latency_p99_s"]),
                fmt_s(r["word_latency_p50_s"]),
                fmt_s(r["word_latency_p99_s"]),
                f"{r['step_ms_mean']:.0f}" if r["step_ms_mean"] else "-",
                f"{r['full_step_ms_min']:.0f}",
                f"{r['active_slots_mean']:.1f}" if r["active_slots_mean"] else "-",
                f"{r['audio_s_per_s']:.2f}",
                f"{r['other_cpu_cores']:.2f}",
                "yes" if r["sustained"] else "no",
            ]
            for r in rows
        ],
    )


def tts_table(rows: list[dict[str, Any]]) -> None:
    headers = [
        "sessions",
        "frames",
        "first audio p50",
        "first audio max",
        "max playback lag",
        "min speed xRT",
        "step ms",
        "full step min",
        "other CPU",
        "sustained",
    ]
    print_table(
        headers,
        [
            [
                str(r["streams"]),
                str(r["frames"]),
                fmt_s(r["first_audio_p50_s"]),
                fmt_s(r["first_audio_max_s"]),
                fmt_s(r["playback_lag_max_s"]),
                "-" if r["speed_x_realtime_min"] is None else f"{r['speed_x_realtime_min']:.2f}",
                f"{r['step_ms_mean']:.0f}" if r["step_ms_mean"] else "-",
                f"{r['full_step_ms_min']:.0f}",
                f"{r['other_cpu_cores']:.2f}",
                "yes" if r["sustained"] else "no",
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(machine_line(info))
    if args.mode == "stt":
        model: Any = build_model(args)
        description = model.description
        print(f"model: {description}; Mimi float32, fast kernels; {args.seconds:g} s per stream")
    else:
        model, description = build_tts(args)
        print(f"model: {description}; Mimi float32, fast kernels; {args.words} words per session")
    rows = []
    for n in args.streams:
        row = run_load(model, n, args) if args.mode == "stt" else run_tts_load(model, n, args)
        rows.append(row)
        verdict = "sustained" if row["sustained"] else "FALLS BEHIND"
        if args.mode == "stt":
            detail = f"frame p50 {fmt_s(row['frame_latency_p50_s'])} p99 {fmt_s(row['frame_latency_p99_s'])}"
        else:
            detail = (
                f"first audio p50 {fmt_s(row['first_audio_p50_s'])}, lag {fmt_s(row['playback_lag_max_s'])}"
            )
        print(f"  {n:3d}: {detail}, step {row['step_ms_mean'] or 0:.0f} ms, {verdict}", flush=True)
        if not row["sustained"] and args.stop_early:
            break
    (stt_table if args.mode == "stt" else tts_table)(rows)
    best = max((r["streams"] for r in rows if r["sustained"]), default=0)
    print(f"sustained at real time: {best} (p99 frame latency / playback lag <= {args.max_p99:g} s)")
    # N real-time streams need a full-batch step within 80 ms; the fastest full step estimates an idle CPU.
    capacity = max((r["streams"] for r in rows if r["full_step_ms_min"] <= 1000 * FRAME / SR), default=0)
    print(f"idle-machine estimate: {capacity} (largest N whose fastest full-batch step is <= 80 ms)")
    if args.json:
        payload = {
            "machine": info,
            "model": description,
            "args": vars(args),
            "rows": rows,
            "sustained": best,
            "idle_estimate": capacity,
        }
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
