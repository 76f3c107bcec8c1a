"""The `dsm` command line.

Each command group lives in its own module (`dsm.cli.codec`, `dsm.cli.stt`, ...) exposing
`register(commands, common)`, which adds its argparse subcommands; each leaf sets `func`, a function taking
the parsed arguments and returning an exit status. Failures that are the user's to fix raise `DsmError`
and are reported as `dsm: error: <message>` with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import torch

from dsm import __version__
from dsm.cli.common import common_options
from dsm.errors import DsmError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Command-group modules under dsm.cli, in the order `dsm --help` lists them.
COMMAND_MODULES = ["codec", "stt", "tts", "train", "data", "serve", "client"]


# -- entry point ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `dsm` parser; each leaf subcommand sets `func`."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="dsm", description="Delayed Streams Modeling: streaming speech tools.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"dsm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"dsm.cli.{name}").register(commands, common)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv, errors only with --quiet."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logger = logging.getLogger("dsm")
    for handler in [h for h in logger.handlers if getattr(h, "_dsm_cli", False)]:
        logger.removeHandler(handler)  # a previous main() call in this process
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._dsm_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the `dsm` command line; returns the exit status (0 ok, 2 usage/user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: return their status instead of exiting
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    # -v/-q default to SUPPRESS so a subcommand does not reset what was given before it.
    args.verbose, args.quiet = getattr(args, "verbose", 0), getattr(args, "quiet", False)
    setup_logging(args.verbose, args.quiet)
    try:
        with torch.inference_mode():
            return args.func(args)
    except DsmError as e:
        print(f"dsm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dsm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
