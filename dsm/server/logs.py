"""Structured server logs: one line per event with `key=value` fields (or one JSON object per line).

`event(logger, "session_start", module="asr", slot=3)` logs the event name as the message and the
fields as structured data. `setup_logging` sends them to stderr (unless silent) and, with a `log_dir`,
to a daily file `log_dir/log.{instance_name}.YYYY-MM-DD` as moshi-server names its log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["DailyFileHandler", "event", "setup_logging"]

LOGGER = "dsm.server"


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


class KeyValueFormatter(logging.Formatter):
    """`2025-01-01T12:00:00.123Z INFO dsm.server session_start module=asr slot=3`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        parts = [f"{ts}Z", record.levelname, record.name, record.getMessage()]
        for key, value in getattr(record, "fields", {}).items():
            text = str(value)
            if not text or any(c.isspace() for c in text) or '"' in text:
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            obj[key] = value if isinstance(value, int | float | bool | type(None)) else str(value)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj)


class DailyFileHandler(logging.Handler):
    """Appends to `directory/log.{instance}.YYYY-MM-DD` (UTC date), switching files at midnight."""

    def __init__(self, directory: str | Path, instance: str):
        super().__init__()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.instance = instance
        self._date: str | None = None
        self._stream = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            date = dt.datetime.fromtimestamp(record.created, dt.timezone.utc).strftime("%Y-%m-%d")
            if date != self._date:
                if self._stream is not None:
                    self._stream.close()
                self._stream = open(self.directory / f"log.{self.instance}.{date}", "a", encoding="utf-8")  # noqa: SIM115
                self._date = date
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


def setup_logging(
    level: str = "info",
    log_dir: str | None = None,
    instance_name: str = "dsm",
    silent: bool = False,
    json_lines: bool = False,
) -> None:
    """Configure the `dsm` loggers for a server process."""
    logger = logging.getLogger("dsm")
    numeric = logging.getLevelName({"TRACE": "DEBUG", "WARN": "WARNING"}.get(level.upper(), level.upper()))
    if not isinstance(numeric, int):
        numeric = logging.INFO
    formatter: logging.Formatter = JsonFormatter() if json_lines else KeyValueFormatter()
    for handler in [h for h in logger.handlers if getattr(h, "_dsm_server", False)]:
        logger.removeHandler(handler)
        handler.close()
    for handler in [h for h in logger.handlers if getattr(h, "_dsm_cli", False)]:
        logger.removeHandler(handler)  # the CLI's plain stderr handler: replaced by the structured one
    handlers: list[logging.Handler] = []
    if not silent:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_dir:
        handlers.append(DailyFileHandler(log_dir, instance_name))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._dsm_server = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(numeric)
    logger.propagate = False
