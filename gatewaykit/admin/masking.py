"""
The effective configuration as JSON-ready data, with every secret shown
as C{"***"}.

A value is secret when its field is named like one (L{SECRET_NAMES}), when
its attrs field says so (C{metadata={"secret": True}}), or when it is the
password part of a URL (C{redis://:pw@host}). Policy types from plugins get
the same treatment: mark their secret option fields with the metadata.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

import attrs

MASK = "***"

SECRET_NAMES = frozenset(
    {
        "secret",
        "secrets",
        "previous_secrets",
        "token",
        "password",
        "passwords",
        "htpasswd",  # password hashes, which can be attacked offline
        "api_key",
        "client_secret",
        "private_key",
    }
)
"""Field and key names whose values are never shown."""


def masked_config(config: Any) -> dict[str, Any]:
    """C{config} (a L{gatewaykit.config.model.Config}) as plain data, secrets masked."""
    plain = _plain(config)
    assert isinstance(plain, dict)
    return plain


def _is_secret_name(name: str) -> bool:
    return name.lower() in SECRET_NAMES


def _masked(value: Any) -> Any:
    """C{MASK} for a secret value; nothing given (empty, C{None}) stays as is."""
    if value is None or value == "" or value == () or value == {}:
        return value
    if isinstance(value, (list, tuple)):
        return [MASK for _ in value]
    return MASK


def _plain(value: Any) -> Any:
    if attrs.has(type(value)):
        out: dict[str, Any] = {}
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if field.metadata.get("secret") or _is_secret_name(field.name):
                out[field.name] = _masked(item)
            else:
                out[field.name] = _plain(item)
        return out
    if isinstance(value, Mapping):
        return {
            str(key): _masked(item) if _is_secret_name(str(key)) else _plain(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item) for item in value), key=str)
    if isinstance(value, str):
        return _without_password(value)
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(
        value, (ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress.IPv4Address,
                ipaddress.IPv6Address)
    ):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    # Keys, contexts and other objects have no useful (or safe) text form.
    return f"<{type(value).__name__}>"


def _without_password(text: str) -> str:
    """C{text}, with the password of a URL in it replaced by C{MASK}."""
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if not password:
        return text
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
