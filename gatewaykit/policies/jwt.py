"""
The C{jwt} policy: a bearer token (RFC 6750) verified with the keys of a
JWKS (a file, and/or a URL kept fresh) or with a shared secret (HS*).

Only the algorithms the config lists are accepted, C{none} never, and a key
is only used with the algorithms of its type (an RSA key never verifies an
HS256 token: no algorithm confusion). C{exp}, C{nbf} and C{iat} are checked
against the reactor's clock with C{leeway}.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from typing import Any, Optional, Union

import jwt
from attrs import field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewaykit.config.schema import (
    Context,
    Invalid,
    Key,
    Section,
    boolean,
    duration,
    expect_map,
    header_name,
    list_of,
    one_of,
    pairs,
    text,
)
from gatewaykit.config.yamlpos import Node
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.message import Request
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.auth import (
    DEFAULT_REALM,
    Answer,
    HTTPClient,
    challenge,
    claim_text,
    config_file,
    http_url,
    set_fields,
    text_or_list,
    unauthorized,
    unavailable,
    upstream_header,
)
from gatewaykit.policies.chain import Identity, PolicyCall, PolicyContext

log = Logger()

# HS* algorithms and the shortest secret each may use (RFC 7518 section 3.2).
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}
# Asymmetric algorithms and the key type (and curve) each verifies with.
KEY_TYPES: dict[str, tuple[str, Optional[str]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "ES256K": ("EC", "secp256k1"),
    "EdDSA": ("OKP", None),
}
ALGORITHMS = (*HMAC_ALGORITHMS, *KEY_TYPES)

_EC_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
_MIN_RSA_BITS = 2048
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_LONGEST_REFRESH = 24 * 3600.0

VERIFIED_TOKENS = 4096
"""
How many verified tokens a C{jwt} policy remembers (least recently used
first out). A client sends the same token for its whole lifetime, and
verifying one costs far more than the rest of a proxied request (an RSA or
ECDSA signature, and PyJWT's parsing): a remembered token is only checked
for its times again. Forgotten when the key set changes.
"""


# -- keys ------------------------------------------------------------------------


@frozen
class SigningKey:
    """A public key of a JWKS and what it may verify."""

    kid: Optional[str]
    kty: str
    crv: Optional[str]
    alg: Optional[str]  # the JWK's own "alg", when it names one
    key: Any = field(repr=False)  # a cryptography public key

    def fits(self, alg: str) -> bool:
        """Whether this key may verify a token signed with C{alg}."""
        wanted = KEY_TYPES.get(alg)
        if wanted is None or self.alg not in (None, alg):
            return False
        kty, crv = wanted
        return self.kty == kty and (crv is None or self.crv == crv)


def _signing_key(jwk: Any) -> SigningKey:
    if not isinstance(jwk, dict):
        raise ValueError("not a JSON object")
    kty: Any = jwk.get("kty")
    if kty == "oct":
        raise ValueError("symmetric keys are not read from a JWKS (use secret)")
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise ValueError("holds private key material; publish only public keys")
    if jwk.get("use") not in (None, "sig"):
        raise ValueError(f"is for use {jwk.get('use')!r}, not 'sig'")
    alg = jwk.get("alg")
    if alg is not None and alg not in KEY_TYPES:
        raise ValueError(f"alg {alg!r} is not supported")
    crv: Any = jwk.get("crv")
    algorithm = {"RSA": "RS256", "EC": _EC_ALGORITHM.get(crv), "OKP": "EdDSA"}.get(kty)
    if algorithm is None:
        raise ValueError(f"unsupported key type {kty!r}" + (f" (curve {crv!r})" if crv else ""))
    try:
        key = jwt.PyJWK(jwk, algorithm).key
    except jwt.PyJWTError as e:
        raise ValueError(str(e)) from None
    if kty == "RSA" and key.key_size < _MIN_RSA_BITS:
        raise ValueError(f"RSA keys under {_MIN_RSA_BITS} bits are refused")
    kid = jwk.get("kid")
    return SigningKey(kid if isinstance(kid, str) else None, kty, crv, alg, key)


def parse_jwks(content: bytes) -> tuple[tuple[SigningKey, ...], list[str]]:
    """
    The usable keys of a JWKS document (RFC 7517) and why the others were
    left out; C{ValueError} if it is not a JWKS at all.
    """
    try:
        document = json.loads(content)
    except ValueError:
        raise ValueError("not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('expected a JSON object with a "keys" list')
    keys: list[SigningKey] = []
    skipped: list[str] = []
    for index, jwk in enumerate(document["keys"]):
        try:
            keys.append(_signing_key(jwk))
        except ValueError as e:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            skipped.append(f"key {index + 1}{f' ({kid!r})' if kid else ''} {e}")
    return tuple(keys), skipped


def _file_keys(content: bytes) -> tuple[SigningKey, ...]:
    keys, skipped = parse_jwks(content)
    if skipped:
        raise ValueError("; ".join(skipped))
    if not keys:
        raise ValueError("holds no keys")
    return keys


class SigningKeys:
    """
    The keys a C{jwt} policy verifies with: those of C{jwks_file}, and those
    fetched from C{jwks_url}, refreshed periodically (C{Cache-Control:
    max-age}, else C{refresh}) and when a token names an unknown key, but
    never more than once per C{refresh_min}. A failed fetch keeps the last
    good keys.
    """

    def __init__(
        self,
        file_keys: tuple[SigningKey, ...],
        url: Optional[str],
        client: Optional[HTTPClient],
        clock: Any,
        refresh: float = 300.0,
        refresh_min: float = 30.0,
        timeout: float = 5.0,
        policy: str = "",
    ) -> None:
        self._file_keys = file_keys
        self._fetched: tuple[SigningKey, ...] = ()
        self._fetched_once = False
        self.generation = 0
        """Counts the changes of the key set (each fetch that brought keys)."""
        self._url = url
        self._client = client
        self._clock = clock
        self._refresh = refresh
        self._refresh_min = refresh_min
        self._timeout = timeout
        self._policy = policy
        self._last_fetch = -math.inf
        self._waiters: Optional[list[Deferred[None]]] = None
        self._fetch: Optional[Deferred[Any]] = None
        self._next: Any = None
        if url is not None:
            self.refresh()

    @property
    def remote(self) -> bool:
        """Whether there is a URL to fetch keys from."""
        return self._url is not None

    @property
    def known(self) -> bool:
        """Whether any key set is known (the file's, or one fetch succeeded)."""
        return bool(self._file_keys) or self._fetched_once

    def matching(self, alg: str, kid: Optional[str]) -> list[SigningKey]:
        """The keys that may verify a token with C{alg} and C{kid}."""
        return [
            key
            for keys in (self._file_keys, self._fetched)
            for key in keys
            if key.fits(alg) and (kid is None or key.kid == kid)
        ]

    def refreshed(self) -> Deferred[None]:
        """
        Fires once a fetch ends: the one running, or one started now unless
        the last began less than C{refresh_min} ago (then at once).
        """
        if self._waiters is None:
            if self._clock.seconds() - self._last_fetch < self._refresh_min:
                return succeed(None)
            self.refresh()
        if self._waiters is None:  # the fetch ended at once
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def refresh(self) -> None:
        """Fetch the URL's keys now, unless a fetch is running."""
        if self._waiters is not None or self._client is None or self._url is None:
            return
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        self._last_fetch = self._clock.seconds()
        self._waiters = []
        fetch = self._client.get(self._url, [(b"Accept", b"application/json")], self._timeout)
        self._fetch = fetch
        fetch.addCallback(self._received)
        fetch.addErrback(self._failed)

    def _received(self, answer: Answer) -> None:
        if answer.status != 200:
            raise ValueError(f"status {answer.status}")
        keys, skipped = parse_jwks(answer.body)
        if not keys:
            raise ValueError("no usable keys" + (f": {'; '.join(skipped)}" if skipped else ""))
        if skipped:
            log.warn(
                "jwt {policy}: left out keys of {url}: {skipped}",
                policy=self._policy,
                url=self._url,
                skipped="; ".join(skipped),
            )
        self._fetched = keys
        self._fetched_once = True
        self.generation += 1
        self._done(self._interval(answer.get("cache-control")))

    def _interval(self, cache_control: Optional[bytes]) -> float:
        match = _MAX_AGE.search(cache_control.decode("latin-1")) if cache_control else None
        if match is None:
            return self._refresh
        return min(max(float(match.group(1)), self._refresh_min), _LONGEST_REFRESH)

    def _failed(self, failure: Failure) -> None:
        if self._waiters is None:  # closed
            return
        log.warn(
            "jwt {policy}: cannot fetch keys from {url} ({why}); keeping the last good keys",
            policy=self._policy,
            url=self._url,
            why=failure.getErrorMessage() or failure.type.__name__,
        )
        self._done(self._refresh_min)

    def _done(self, next_in: float) -> None:
        self._fetch = None
        waiters, self._waiters = self._waiters or [], None
        self._next = self._clock.callLater(next_in, self.refresh)
        for waiter in waiters:
            waiter.callback(None)

    def close(self) -> None:
        """Stop refreshing."""
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        fetch, self._fetch = self._fetch, None
        waiters, self._waiters = self._waiters or [], None
        if fetch is not None:
            fetch.cancel()
        for waiter in waiters:
            waiter.callback(None)


# -- config ----------------------------------------------------------------------


def _algorithm(ctx: Context, node: Node) -> str:
    name = text(expected="an algorithm name")(ctx, node)
    if name.lower() == "none":
        raise Invalid(node, "the 'none' algorithm is never accepted: tokens must be signed")
    parsed: str = one_of(*ALGORITHMS, what="algorithm")(ctx, node)
    return parsed


@frozen
class JWTOptions:
    """C{type: jwt}; see the module and C{docs/authentication.md}."""

    algorithms: tuple[str, ...]
    secret: Optional[str] = field(default=None, repr=False, metadata={"secret": True})
    jwks_file: tuple[SigningKey, ...] = ()
    jwks_url: Optional[str] = None
    jwks_refresh: float = 300.0
    jwks_refresh_min: float = 30.0
    jwks_timeout: float = 5.0
    issuer: Optional[tuple[str, ...]] = None
    audience: Optional[tuple[str, ...]] = None
    leeway: float = 0.0
    require: tuple[str, ...] = ("exp",)
    forward_claims: tuple[tuple[str, str], ...] = ()
    header: str = "Authorization"
    cookie: Optional[str] = None
    realm: str = DEFAULT_REALM
    strip: bool = False


_SECTION = Section(
    {
        "algorithms": Key(
            list_of(_algorithm, non_empty=True, unique=str, what="algorithm"), required=True
        ),
        "secret": text(),
        "jwks_file": config_file(_file_keys, "JWKS file"),
        "jwks_url": http_url,
        "jwks_refresh": duration(),
        "jwks_refresh_min": duration(),
        "jwks_timeout": duration(),
        "issuer": text_or_list,
        "audience": text_or_list,
        "leeway": duration(positive=False),
        "require": list_of(text(), unique=str, what="claim"),
        "forward_claims": pairs(upstream_header),
        "header": header_name,
        "cookie": text(expected="a cookie name"),
        "realm": text(),
        "strip": boolean,
    }
)


def _options(ctx: Context, node: Node) -> JWTOptions:
    before = len(ctx.problems)
    values = _SECTION(ctx, node)
    if len(ctx.problems) == before:
        _check(ctx, expect_map(node), values)
    return JWTOptions(**values)


def _check(ctx: Context, node: Any, values: dict[str, Any]) -> None:
    """What the keys say together: every algorithm has its keys, and no key is idle."""
    algorithms = values["algorithms"]
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    asymmetric = [a for a in algorithms if a in KEY_TYPES]
    secret = values.get("secret")
    if hmac and secret is None:
        ctx.report(node.node_of("algorithms"), f"{hmac[0]} needs a secret")
    if secret is not None:
        if not hmac:
            ctx.report(node.node_of("secret"), "secret is only used by HS256, HS384 and HS512")
        for alg in hmac:
            if len(secret.encode("utf-8")) < HMAC_ALGORITHMS[alg]:
                ctx.report(
                    node.node_of("secret"),
                    f"a secret for {alg} must be at least {HMAC_ALGORITHMS[alg]} bytes"
                    " (RFC 7518 section 3.2)",
                )
                break
    sources = [k for k in ("jwks_file", "jwks_url") if k in values]
    if asymmetric and not sources:
        ctx.report(node.node_of("algorithms"), f"{asymmetric[0]} needs jwks_file or jwks_url")
    for source in sources:
        if not asymmetric:
            ctx.report(
                node.node_of(source),
                f"{source} keys only verify RS*, PS*, ES* and EdDSA algorithms",
            )
    if "jwks_file" in values and "jwks_url" not in values and asymmetric:
        if not any(key.fits(a) for key in values["jwks_file"] for a in asymmetric):
            ctx.report(
                node.node_of("jwks_file"),
                f"no key in the file fits the algorithms {', '.join(asymmetric)}",
            )
    if "jwks_url" not in values:
        for key in ("jwks_refresh", "jwks_refresh_min", "jwks_timeout"):
            if key in values:
                ctx.report(node.entries[key][0], f"{key} is only used with jwks_url")


# -- the policy ------------------------------------------------------------------

_DESCRIPTIONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidAudienceError, "the token is not meant for this audience"),
    (jwt.InvalidIssuerError, "the token's issuer is not accepted"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (jwt.InvalidSignatureError, "the signature does not verify"),
    (jwt.InvalidKeyError, "the signing key is not acceptable"),
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
)


def _description(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the token has no {error.claim} claim"
    for kind, description in _DESCRIPTIONS:
        if isinstance(error, kind):
            return description
    return "the token is malformed"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """The token's scopes: C{scope} (space separated) or C{scp} (a list, or text)."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list):
            return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


@frozen
class Verified:
    """
    A token whose signature, issuer, audience and required claims held,
    with what every request that presents it needs worked out once: who it
    names, its scopes, the fields sent upstream and the bounds its times
    (C{exp}, C{nbf}, C{iat}, numbers) set with the policy's C{leeway}.
    """

    claims: dict[str, Any]
    subject: str
    scopes: frozenset[str]
    forwarded: dict[str, str]
    expires: float  # refused from then on (exp + leeway)
    valid_from: float  # refused before (nbf - leeway)
    issued: float  # refused before: issued in the future (iat - leeway)

    @classmethod
    def of(cls, claims: dict[str, Any], leeway: float, forward_claims: Any) -> "Verified":
        """C{claims} (times known to be numbers or absent) as L{Verified}."""
        subject = claims.get("sub")
        forwarded: dict[str, str] = {}
        for claim, header in forward_claims:
            value = claim_text(claims.get(claim))
            if value is not None:
                forwarded[header] = value
        return cls(
            claims,
            subject if isinstance(subject, str) else "",
            scopes_of(claims),
            forwarded,
            claims["exp"] + leeway if "exp" in claims else math.inf,
            claims["nbf"] - leeway if "nbf" in claims else -math.inf,
            claims["iat"] - leeway if "iat" in claims else -math.inf,
        )

    def time_problem(self, now: float) -> Optional[str]:
        """Why the token is refused at C{now}, if it is."""
        if now >= self.expires:
            return "the token has expired"
        if now < self.valid_from:
            return "the token is not valid yet"
        if now < self.issued:
            return "the token was issued in the future"
        return None


# What a check ends with: nothing (go on) or the answer refusing the request.
Verdict = Optional[GatewayError]


@implementer(IPolicy)
class JWTPolicy:
    """Recognises a request by its bearer token."""

    def __init__(
        self, name: str, options: JWTOptions, clock: Any, client: Optional[HTTPClient] = None
    ) -> None:
        self.name = name
        self._options = options
        self._clock = clock
        self._client = client
        self._algorithms = frozenset(options.algorithms)
        self._secret = options.secret.encode("utf-8") if options.secret is not None else None
        self._bearer = options.header.lower() == "authorization"
        self._forward_names = [header for _, header in options.forward_claims]
        self._keys = SigningKeys(
            options.jwks_file,
            options.jwks_url,
            client,
            clock,
            options.jwks_refresh,
            options.jwks_refresh_min,
            options.jwks_timeout,
            name,
        )
        # Tokens whose signature, audience, issuer and required claims were
        # verified (see VERIFIED_TOKENS), and the key set generation they
        # were verified with.
        self._verified: OrderedDict[bytes, Verified] = OrderedDict()
        self._verified_generation = 0
        self._decode_options: dict[str, Any] = {
            # Times are checked against the reactor's clock below.
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": options.audience is not None,
            "verify_iss": options.issuer is not None,
            "require": list(options.require),
            "enforce_minimum_key_length": True,
        }

    def challenge(self, error: Optional[str] = None, description: Optional[str] = None) -> bytes:
        """This policy's C{WWW-Authenticate} value (RFC 6750 section 3)."""
        return challenge(
            "Bearer", realm=self._options.realm, error=error, error_description=description
        )

    def _invalid(self, description: str) -> GatewayError:
        return unauthorized(description, self.challenge("invalid_token", description))

    def _token(self, request: Request) -> tuple[Optional[bytes], str]:
        """The token and where it came from (C{header} or C{cookie})."""
        value = request.headers.get(self._options.header)
        if value:
            scheme, _, rest = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and rest.strip():
                return rest.strip(), "header"
            if not self._bearer:
                return value.strip(), "header"
        cookie = self._options.cookie
        if cookie is not None and request.cookies.get(cookie):
            return request.cookies[cookie].encode("latin-1"), "cookie"
        return None, ""

    def on_request(self, call: PolicyCall) -> Union[Verdict, Deferred[Verdict]]:
        token, source = self._token(call.request)
        if token is None:
            return unauthorized("a bearer token is required", self.challenge())
        verified = self._remembered(token)
        if verified is not None:
            return self._still_valid(call, token, verified, source)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return self._invalid("the token is malformed")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            return self._invalid("the token's algorithm is not accepted")
        if alg in HMAC_ALGORITHMS:
            return self._verify(call, token, source, alg, [self._secret])
        kid = header.get("kid")
        keys = self._keys.matching(alg, kid)
        if keys or not self._keys.remote:
            return self._verify(call, token, source, alg, [k.key for k in keys], kid)
        return self._keys.refreshed().addCallback(
            lambda _: self._verify(
                call, token, source, alg, [k.key for k in self._keys.matching(alg, kid)], kid
            )
        )

    def _verify(
        self,
        call: PolicyCall,
        token: bytes,
        source: str,
        alg: str,
        keys: list[Any],
        kid: Optional[str] = None,
    ) -> Verdict:
        if not keys:
            if not self._keys.known:
                return unavailable("the keys to verify tokens could not be fetched")
            if kid is not None:
                return self._invalid("the token's key id is not known")
            return self._invalid("no key verifies the token's algorithm")
        options = self._options
        claims: Optional[dict[str, Any]] = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    options=self._decode_options,  # type: ignore[arg-type]
                    audience=options.audience,
                    issuer=options.issuer,
                )
                break
            except jwt.InvalidSignatureError:
                continue  # another key with the same kid (or none) may verify it
            except jwt.PyJWTError as e:
                return self._invalid(_description(e))
        if claims is None:
            return self._invalid("the signature does not verify")
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                return self._invalid(f"the {name} claim is not a number")
        verified = Verified.of(claims, options.leeway, options.forward_claims)
        self._remember(token, verified)
        return self._still_valid(call, token, verified, source)

    def _still_valid(
        self, call: PolicyCall, token: bytes, verified: Verified, source: str
    ) -> Verdict:
        """A token whose signature holds: its times decide."""
        problem = verified.time_problem(self._clock.seconds())
        if problem is not None:
            self._verified.pop(token, None)
            return self._invalid(problem)
        self._accept(call, verified, source)
        return None

    def _remembered(self, token: bytes) -> Optional[Verified]:
        tokens = self._verified_tokens()
        verified = tokens.get(token)
        if verified is not None:
            tokens.move_to_end(token)
        return verified

    def _remember(self, token: bytes, verified: Verified) -> None:
        tokens = self._verified_tokens()
        tokens[token] = verified
        if len(tokens) > VERIFIED_TOKENS:
            tokens.popitem(last=False)

    def _verified_tokens(self) -> OrderedDict[bytes, Verified]:
        """The remembered tokens, forgotten if the key set changed since."""
        if self._verified_generation != self._keys.generation:
            self._verified.clear()
            self._verified_generation = self._keys.generation
        return self._verified

    def _accept(self, call: PolicyCall, verified: Verified, source: str) -> None:
        call.identity = Identity("jwt", verified.subject, verified.scopes, verified.claims)
        request = call.request
        set_fields(request.headers, self._forward_names, verified.forwarded)
        if self._options.strip:
            if source == "header":
                request.headers.remove(self._options.header)
            elif self._options.cookie is not None:
                request.remove_cookie(self._options.cookie)

    def close(self) -> None:
        """Stop refreshing keys and close the key fetcher's connections."""
        self._keys.close()
        if self._client is not None:
            self._client.close()


@implementer(IPolicyFactory)
class JWTFactory:
    """
    The C{jwt} policy type. C{client} replaces the HTTP client that fetches
    C{jwks_url} (tests use a fake).
    """

    name = "jwt"
    options = staticmethod(_options)

    def __init__(self, client: Optional[Any] = None) -> None:
        self._client = client

    def build(self, name: str, options: JWTOptions, context: PolicyContext) -> JWTPolicy:
        client = None
        if options.jwks_url is not None:
            client = self._client if self._client is not None else HTTPClient(context.reactor)
        return JWTPolicy(name, options, context.reactor, client)
