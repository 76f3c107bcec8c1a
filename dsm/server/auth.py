"""API-key checks, as moshi-server does them (server-protocol §2).

WebSocket routes: the `kyutai-api-key` header if present (even when invalid), else the `auth_id` query
parameter. POST routes: the header only. dsm's OpenAI-style routes also accept `Authorization: Bearer KEY`,
which OpenAI clients send. Keys are compared exactly. A header value that is not visible ASCII counts as
absent (and then fails, unless an `auth_id` is allowed and valid).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["API_KEY_HEADER", "is_authorized"]

API_KEY_HEADER = "kyutai-api-key"


def _visible_ascii(value: str) -> bool:
    return all(0x20 <= ord(c) < 0x7F for c in value)


def is_authorized(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    authorized_ids: frozenset[str],
    *,
    allow_query: bool,
    allow_bearer: bool = False,
) -> bool:
    """True when the request carries one of `authorized_ids` where this kind of route looks for it."""
    key = headers.get(API_KEY_HEADER)
    if key is not None and _visible_ascii(key):
        return key in authorized_ids
    if allow_bearer:
        auth = headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip() in authorized_ids
    if allow_query and key is None:
        auth_id = query.get("auth_id")
        return auth_id is not None and auth_id in authorized_ids
    return False
