"""
The C{api_key} policy: a key in a header (or query parameter) looked up by
its SHA-256 in a keys file, so the file holds no usable secret.

Keys file (YAML, relative to the config's folder)::

    - name: billing-service
      sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
      scopes: [invoices:read]
      metadata: {team: billing}
"""

from __future__ import annotations

import hashlib
import hmac
import re
from types import MappingProxyType
from typing import Any, Mapping, Optional

import yaml
from attrs import field, frozen
from zope.interface import implementer

from gatewaykit.config.schema import Context, Key, Section, boolean, expect_map, header_name, text
from gatewaykit.config.yamlpos import Node
from gatewaykit.http.errors import GatewayError
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.auth import (
    DEFAULT_REALM,
    challenge,
    config_file,
    set_fields,
    unauthorized,
    upstream_header,
)
from gatewaykit.policies.chain import Identity, PolicyCall, PolicyContext

_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_ENTRY_FIELDS = ("name", "sha256", "scopes", "metadata")


@frozen
class APIKey:
    """One entry of a keys file."""

    name: str
    sha256: str  # lower-case hex
    scopes: frozenset[str] = frozenset()
    metadata: Mapping[str, Any] = MappingProxyType({})


def _entry(index: int, entry: Any) -> APIKey:
    where = f"entry {index + 1}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with name and sha256")
    name = entry.get("name")
    if isinstance(name, str) and name:
        where += f" ({name!r})"
    else:
        raise ValueError(f"{where}: needs a name (a non-empty string)")
    for member in entry:
        if member not in _ENTRY_FIELDS:
            hint = "; store only the key's sha256" if member in ("key", "secret") else ""
            raise ValueError(
                f"{where}: unknown field {member!r}{hint} (expected: {', '.join(_ENTRY_FIELDS)})"
            )
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise ValueError(f"{where}: sha256 must be the 64 hex digits of the key's SHA-256")
    scopes = entry.get("scopes") or []
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
        raise ValueError(f"{where}: scopes must be a list of strings")
    metadata = entry.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: metadata must be a mapping")
    return APIKey(name, digest.lower(), frozenset(scopes), MappingProxyType(dict(metadata)))


def parse_keys(content: bytes) -> Mapping[str, APIKey]:
    """The keys of a keys file, by SHA-256 hex digest; C{ValueError} when wrong."""
    try:
        document = yaml.safe_load(content)
    except yaml.YAMLError as e:
        raise ValueError(f"not valid YAML: {e}") from None
    if not isinstance(document, list) or not document:
        raise ValueError("expected a non-empty list of {name, sha256, scopes, metadata}")
    keys: dict[str, APIKey] = {}
    names: set[str] = set()
    for index, item in enumerate(document):
        key = _entry(index, item)
        if key.sha256 in keys:
            raise ValueError(
                f"entry {index + 1} ({key.name!r}): same sha256 as {keys[key.sha256].name!r}"
            )
        if key.name in names:
            raise ValueError(f"entry {index + 1}: duplicate name {key.name!r}")
        names.add(key.name)
        keys[key.sha256] = key
    return MappingProxyType(keys)


@frozen
class APIKeyOptions:
    """
    C{type: api_key}: where the key is (C{header}, or C{query} when given
    alone), the keys file, the challenge's realm, whether the key is removed
    before the request goes upstream (C{strip}), and the field naming the
    key upstream (C{forward_subject}).
    """

    keys_file: Mapping[str, APIKey] = field(repr=False)
    header: Optional[str] = "X-API-Key"
    query: Optional[str] = None
    realm: str = DEFAULT_REALM
    strip: bool = True
    forward_subject: Optional[str] = None


_SECTION = Section(
    {
        "keys_file": Key(config_file(parse_keys, "keys file"), required=True),
        "header": header_name,
        "query": text(expected="a query parameter name"),
        "realm": text(),
        "strip": boolean,
        "forward_subject": upstream_header,
    }
)


def _options(ctx: Context, node: Node) -> APIKeyOptions:
    values = _SECTION(ctx, node)
    if "query" in values and "header" not in expect_map(node).entries:
        values["header"] = None
    return APIKeyOptions(**values)


@implementer(IPolicy)
class APIKeyPolicy:
    """Recognises a request by its API key."""

    def __init__(self, name: str, options: APIKeyOptions) -> None:
        self.name = name
        self._options = options
        self._keys = options.keys_file
        where = {"header": options.header} if options.header else {"query": options.query}
        self._challenge = challenge("APIKey", realm=options.realm, **where)

    def _presented(self, call: PolicyCall) -> Optional[bytes]:
        options = self._options
        if options.header is not None:
            value = call.request.headers.get(options.header)
            if value:
                return value.strip()
        if options.query is not None:
            param = call.request.query_param(options.query)
            if param:
                return param.encode("utf-8")
        return None

    def on_request(self, call: PolicyCall) -> Optional[GatewayError]:
        presented = self._presented(call)
        if presented is None:
            return unauthorized("an API key is required", self._challenge)
        digest = hashlib.sha256(presented).hexdigest()
        # The table is keyed by SHA-256 of what the client sent, which an
        # attacker cannot steer toward a stored digest; the final equality is
        # still compared in constant time.
        key = self._keys.get(digest)
        if key is None or not hmac.compare_digest(key.sha256, digest):
            return unauthorized("the API key is not valid", self._challenge)
        call.identity = Identity("api_key", key.name, key.scopes, dict(key.metadata))
        self._forward(call, key)
        return None

    def _forward(self, call: PolicyCall, key: APIKey) -> None:
        options = self._options
        request = call.request
        if options.strip:
            if options.header is not None:
                request.headers.remove(options.header)
            if options.query is not None:
                request.remove_query_param(options.query)
        subject_field = options.forward_subject
        if subject_field is not None:
            set_fields(request.headers, [subject_field], {subject_field: key.name})


@implementer(IPolicyFactory)
class APIKeyFactory:
    """The C{api_key} policy type."""

    name = "api_key"
    options = staticmethod(_options)

    def build(self, name: str, options: APIKeyOptions, context: PolicyContext) -> APIKeyPolicy:
        return APIKeyPolicy(name, options)

