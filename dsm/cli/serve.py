"""`dsm serve --config FILE.toml`: the streaming server (moshi-server compatible; see `dsm.server`)."""

from __future__ import annotations

import argparse

from dsm.errors import InputError


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of threads, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import aiohttp  # noqa: F401
        import msgpack  # noqa: F401
    except ImportError as e:
        raise InputError(
            f"dsm serve needs the server extra ({e.name} is missing): pip install 'dsm[server]'"
        ) from None
    from dsm.server import Server, load_config
    from dsm.server.logs import setup_logging

    config = load_config(args.config)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    setup_logging(args.log, config.log_dir, config.instance_name, args.silent, args.log_json)
    device = "cpu" if args.cpu else args.device
    server = Server(config, device=device)
    server.load()  # models loaded and warmed up before the port opens

    def ready(port: int) -> None:
        print(f"dsm serve: listening on http://{args.host}:{port}", flush=True)

    server.serve_forever(args.host, args.port, on_ready=ready)
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    desc = (
        "Serve speech-to-text (and text-to-speech) over moshi-server's WebSocket protocol, its POST variants "
        "and OpenAI-style REST, from a moshi-server TOML config. The port opens once every model is loaded "
        "and warmed up."
    )
    parser = commands.add_parser("serve", parents=[common], help="run the streaming server", description=desc)
    parser.set_defaults(func=cmd_serve)
    parser.add_argument("--config", required=True, metavar="FILE.toml", help="moshi-server TOML config")
    parser.add_argument(
        "--host", "-a", "--addr", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)"
    )
    parser.add_argument(
        "--port", "-p", type=_port, default=8080, help="port (default: 8080; 0 picks a free port)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device for every module (default: each module's, else auto)"
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    parser.add_argument(
        "--threads",
        type=_threads,
        default=0,
        metavar="N",
        help="torch CPU threads (default: torch's choice; 1 is often best on a busy small CPU)",
    )
    parser.add_argument(
        "--log",
        default="info",
        choices=["trace", "debug", "info", "warn", "warning", "error"],
        help="log level (default: info)",
    )
    parser.add_argument("--silent", action="store_true", help="no log on stderr (the log_dir file stays)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
