"""The server process: modules built from a config, the aiohttp application, start and stop.

`Server(config).load()` loads every module's model and warms it up (slow); `await server.start(host,
port)` starts the model loops and only then binds the port, so clients are refused until the models are
ready. `BackgroundServer` runs a server in a thread with its own event loop (tests, benchmarks).

Fixed routes (no authentication): `GET /api/build_info` (the health check moshi-server clients poll),
`GET /api/modules_info`, `GET /metrics` (Prometheus), `GET /health`; unknown paths are served from
`static_dir`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from aiohttp import WSCloseCode, web

from dsm import __version__
from dsm.server.asr_model import load_asr_model
from dsm.server.asr_routes import AsrService
from dsm.server.config import ServerConfig
from dsm.server.context import ServerContext
from dsm.server.logs import event

__all__ = ["BackgroundServer", "Server"]

log = logging.getLogger("dsm.server")

MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # POST bodies (OpenAI allows 25 MB files; WAV at 24 kHz is bigger)


def build_info() -> dict[str, str]:
    """moshi-server's build_info fields (all strings), filled with what describes this dsm build."""
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "build_timestamp": now.isoformat(),
        "build_date": now.date().isoformat(),
        "git_branch": "",
        "git_timestamp": "",
        "git_date": "",
        "git_hash": "",
        "git_describe": f"dsm-{__version__}",
        "rustc_host_triple": f"{platform.machine()}-{platform.system().lower()}",
        "rustc_version": f"python {platform.python_version()}, torch {torch.__version__}",
        "cargo_target_triple": f"{platform.machine()}-{platform.system().lower()}",
        "dsm_version": __version__,
    }


class Server:
    """A configured server: `load()`, then `start()`/`stop()` inside an event loop."""

    def __init__(self, config: ServerConfig, device: str | None = None):
        self.config = config
        self.device = device
        self.ctx = ServerContext(config.authorized_ids)
        self.services: list[Any] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._started = time.monotonic()

    def load(self) -> None:
        """Load and warm up every module (before any port opens)."""
        for cfg in self.config.asr:
            start = time.perf_counter()
            model = load_asr_model(cfg, self.device)
            service = AsrService(cfg, model, self.ctx)
            service.loop.warmup()
            self.services.append(service)
            event(
                log,
                "module_ready",
                module=cfg.name,
                type=cfg.type,
                path=cfg.path,
                batch_size=cfg.batch_size,
                model=model.description,
                seconds=round(time.perf_counter() - start, 2),
            )
        for cfg in self.config.tts:
            start = time.perf_counter()
            from dsm.server.tts_routes import TtsService  # the TTS side loads only when configured

            service = TtsService.load(cfg, self.ctx, self.device)
            self.services.append(service)
            event(
                log,
                "module_ready",
                module=cfg.name,
                type=cfg.type,
                path=cfg.path,
                batch_size=cfg.batch_size,
                seconds=round(time.perf_counter() - start, 2),
            )

    # -- the application ---------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_UPLOAD_BYTES)
        app.router.add_get("/api/build_info", self._build_info)
        app.router.add_get("/api/modules_info", self._modules_info)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        for service in self.services:
            app.router.add_routes(service.routes())
        app.router.add_get("/{tail:.*}", self._static)
        app.on_shutdown.append(self._close_sockets)
        return app

    async def _build_info(self, request: web.Request) -> web.Response:
        return web.json_response(build_info())

    async def _modules_info(self, request: web.Request) -> web.Response:
        return web.json_response([s.info() for s in self.services])

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.ctx.metrics.render(),
            content_type="text/plain",
            headers={"X-Prometheus-Format": "0.0.4"},
        )

    async def _health(self, request: web.Request) -> web.Response:
        failed = [s.cfg.name for s in self.services if getattr(s.loop, "failed", None)]
        body = {
            "status": "failed" if failed else "ok",
            "uptime_s": round(time.monotonic() - self._started, 1),
            "modules": [s.info() for s in self.services],
        }
        if failed:
            body["failed_modules"] = failed
        return web.json_response(body, status=503 if failed else 200)

    async def _static(self, request: web.Request) -> web.StreamResponse:
        root = self.config.static_dir
        if not root or not Path(root).is_dir():
            raise web.HTTPNotFound()
        base = Path(root).resolve()
        target = (base / request.match_info["tail"]).resolve()
        if base != target and base not in target.parents:
            raise web.HTTPNotFound()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(target)

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self.ctx.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    # -- running -----------------------------------------------------------------------------------
    async def start(self, host: str = "0.0.0.0", port: int = 8080) -> int:
        """Start the model loops, then listen; returns the bound port (useful with port 0)."""
        for service in self.services:
            service.loop.start()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        self.port = server.sockets[0].getsockname()[1] if server and server.sockets else port
        event(
            log,
            "listening",
            host=host,
            port=self.port,
            modules=",".join(f"{s.cfg.name}:{s.cfg.path}" for s in self.services),
        )
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for service in self.services:
            service.loop.stop()

    def serve_forever(self, host: str, port: int, on_ready: Callable[[int], None] | None = None) -> None:
        """Run until interrupted (Ctrl-C or SIGTERM); `on_ready(port)` once listening."""

        async def main() -> None:
            import signal

            bound = await self.start(host, port)
            if on_ready is not None:
                on_ready(bound)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                    loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()
            finally:
                event(log, "shutdown")
                await self.stop()

        asyncio.run(main())


class BackgroundServer:
    """A loaded `Server` running in a daemon thread with its own event loop: `with BackgroundServer(s) as
    url: ...` (url like `http://127.0.0.1:PORT`)."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0):
        self.server = server
        self.host = host
        self.port = port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.port}"

    def start(self) -> str:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start(self.host, self.port))
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.server.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="dsm-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.url

    def stop(self) -> None:
        if self.loop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
