"""What every endpoint of one server shares: the API keys, the metrics and the open sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from dsm.server.auth import is_authorized
from dsm.server.metrics import Counter, Registry

__all__ = ["ServerContext"]


@dataclass
class ServerContext:
    authorized_ids: frozenset[str]
    metrics: Registry = field(default_factory=Registry)
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    errors: Counter | None = None

    def __post_init__(self) -> None:
        self.errors = self.metrics.counter(
            "dsm_session_errors", "sessions or requests ended by an error", "kind"
        )

    def authorized(self, request: web.Request, *, allow_query: bool, allow_bearer: bool = False) -> bool:
        return is_authorized(
            request.headers,
            request.query,
            self.authorized_ids,
            allow_query=allow_query,
            allow_bearer=allow_bearer,
        )

    def count_error(self, kind: str) -> None:
        self.errors.inc(value=kind)
