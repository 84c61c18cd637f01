"""
Tests for the pieces of L{gatewaykit.cache}: field parsing, keys,
freshness arithmetic, entries and the memory tier.
"""

from __future__ import annotations

from email.utils import formatdate

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.cache.directives import (
    MAX_DELTA,
    delta_seconds,
    parse_cache_control,
    parse_vary,
    pragma_no_cache,
)
from gatewaykit.cache.entry import Entry
from gatewaykit.cache.freshness import (
    HEURISTIC_CAP,
    explicit_lifetime,
    heuristic_lifetime,
    initial_age,
)
from gatewaykit.cache.keys import (
    key_for_url,
    normalise_accept_encoding,
    primary_key,
    response_coding,
    secondary_key,
    under_prefix,
    variant_keys,
)
from gatewaykit.cache.store import MemoryTier
from gatewaykit.http.message import Headers, Request

NOW = 1_800_000_000.0


def entry(
    key: str = "http://h/a",
    fields: tuple = ((b"Cache-Control", b"max-age=60"),),
    body: bytes = b"body",
    path: str = "/a",
) -> Entry:
    made = Entry(key, key.split("\n")[0], path, 200, b"OK", list(fields), NOW, NOW)
    made.body = body
    return made


class DirectiveTests(SynchronousTestCase):
    """Cache-Control, Pragma and Vary values."""

    def test_tokens_and_arguments(self) -> None:
        """Names are case-insensitive; arguments are tokens or quoted strings."""
        directives = parse_cache_control(
            [b'Max-Age=60, no-cache, private="Set-Cookie, X-A"', b"s-maxage = 5"]
        )
        self.assertEqual(
            directives,
            {"max-age": "60", "no-cache": None, "private": "Set-Cookie, X-A", "s-maxage": "5"},
        )

    def test_first_wins(self) -> None:
        """A repeated directive: the first counts."""
        self.assertEqual(parse_cache_control([b"max-age=5, max-age=50"])["max-age"], "5")

    def test_quoted_pair(self) -> None:
        """A backslash escapes the next character in a quoted string."""
        self.assertEqual(parse_cache_control([b'x="a\\"b"'])["x"], 'a"b')

    def test_delta_seconds(self) -> None:
        """Invalid values are ignored; huge ones are capped at 2^31."""
        directives = parse_cache_control([b"max-age=abc, s-maxage=99999999999999, x=-1"])
        self.assertIsNone(delta_seconds(directives, "max-age"))
        self.assertEqual(delta_seconds(directives, "s-maxage"), MAX_DELTA)
        self.assertIsNone(delta_seconds(directives, "x"))
        self.assertIsNone(delta_seconds(directives, "absent"))

    def test_pragma(self) -> None:
        """Pragma: no-cache among other tokens."""
        self.assertTrue(pragma_no_cache([b"foo, No-Cache"]))
        self.assertFalse(pragma_no_cache([b"foo"]))

    def test_vary(self) -> None:
        """Vary names, lower case, once, in order."""
        self.assertEqual(
            parse_vary([b"Accept-Encoding, Origin", b"origin,  X-A"]),
            (b"accept-encoding", b"origin", b"x-a"),
        )


class KeyTests(SynchronousTestCase):
    """Primary and secondary keys."""

    def request(self, scheme: str = "http", port=None, query: str = "") -> Request:
        return Request("GET", b"/", "/a b", query=query, host="h.example", port=port, scheme=scheme)

    def test_primary(self) -> None:
        """Scheme, host, a port that is not the default, path and query."""
        self.assertEqual(primary_key(self.request(query="x=1")), "http://h.example/a b?x=1")
        self.assertEqual(primary_key(self.request(port=80)), "http://h.example/a b")
        self.assertEqual(primary_key(self.request(port=8080)), "http://h.example:8080/a b")
        self.assertEqual(primary_key(self.request("https", 443)), "https://h.example/a b")

    def test_url(self) -> None:
        """A purge URL gives the key a request for it has."""
        self.assertEqual(key_for_url("HTTP://H.example:80/a/./b?q=1"), "http://h.example/a/b?q=1")
        self.assertEqual(key_for_url("https://h.example:8443"), "https://h.example:8443/")
        self.assertIsNone(key_for_url("/a"))
        self.assertIsNone(key_for_url("ftp://h/a"))
        self.assertIsNone(key_for_url("http://h/../a"))

    def test_prefix(self) -> None:
        """Prefixes match on segment boundaries."""
        self.assertTrue(under_prefix("/users", "/users"))
        self.assertTrue(under_prefix("/users/1", "/users"))
        self.assertTrue(under_prefix("/users/1", "/users/"))
        self.assertFalse(under_prefix("/usersx", "/users"))
        self.assertTrue(under_prefix("/anything", "/"))

    def test_accept_encoding(self) -> None:
        """Order, case, spaces and q=1 do not matter; weights do."""
        same = [b"gzip, deflate, br", b"br,GZIP , deflate", b"deflate;q=1.0, br, gzip"]
        self.assertEqual(len({normalise_accept_encoding(v) for v in same}), 1)
        self.assertEqual(normalise_accept_encoding(b"gzip;q=0.5, br"), b"br,gzip;q=0.5")

    def test_secondary(self) -> None:
        """Absent and empty differ; whitespace is folded; the negotiated coding replaces Accept-Encoding."""
        names = (b"accept-language", b"accept-encoding")
        absent = secondary_key(names, Headers())
        empty = secondary_key(names, Headers([(b"Accept-Language", b"")]))
        self.assertNotEqual(absent, empty)
        folded = Headers([(b"Accept-Language", b"en,  fr"), (b"Accept-Encoding", b"gzip")])
        self.assertEqual(
            secondary_key(names, folded),
            secondary_key(names, Headers([(b"Accept-Language", b"en, fr"), (b"accept-encoding", b"GZIP")])),
        )
        self.assertEqual(secondary_key(names, folded, b"br"), "en, fr\t=br")

    def test_variant_keys(self) -> None:
        """By coding first when the response varies on Accept-Encoding."""
        headers = Headers([(b"Accept-Encoding", b"gzip")])
        keys = variant_keys("p", (b"accept-encoding",), headers, b"gzip")
        self.assertEqual(keys, ["p\n=gzip", "p\ngzip"])
        self.assertEqual(variant_keys("p", (b"origin",), headers, b"gzip"), ["p\n\0"])

    def test_response_coding(self) -> None:
        """The body's coding, identity without one."""
        self.assertEqual(response_coding([(b"Content-Encoding", b" GZIP")]), b"gzip")
        self.assertEqual(response_coding([]), b"identity")


class FreshnessTests(SynchronousTestCase):
    """RFC 9111 4.2 arithmetic."""

    def test_explicit(self) -> None:
        """s-maxage, max-age, then Expires - Date; None without any."""
        directives = parse_cache_control([b"max-age=10, s-maxage=20"])
        self.assertEqual(explicit_lifetime(directives, NOW, None), 20)
        expires = formatdate(NOW + 30, usegmt=True).encode()
        self.assertEqual(explicit_lifetime({}, NOW, expires), 30)
        self.assertEqual(explicit_lifetime({}, NOW, b"garbage"), 0)
        self.assertIsNone(explicit_lifetime({}, NOW, None))

    def test_heuristic(self) -> None:
        """10% of Date - Last-Modified, capped; default_ttl first; 0 for other statuses."""
        self.assertEqual(heuristic_lifetime(200, {}, NOW, NOW - 1000, 0), 100)
        self.assertEqual(heuristic_lifetime(200, {}, NOW, NOW - 10**9, 0), HEURISTIC_CAP)
        self.assertEqual(heuristic_lifetime(200, {}, NOW, NOW - 1000, 5), 5)
        self.assertEqual(heuristic_lifetime(302, {}, NOW, NOW - 1000, 5), 0)
        self.assertEqual(heuristic_lifetime(302, {"public": None}, NOW, NOW - 1000, 0), 100)
        self.assertEqual(heuristic_lifetime(200, {}, NOW, None, 0), 0)

    def test_initial_age(self) -> None:
        """The larger of apparent age and Age plus the response delay."""
        self.assertEqual(initial_age(0, NOW - 10, NOW, NOW), 10)
        self.assertEqual(initial_age(5, NOW, NOW - 2, NOW), 7)
        self.assertEqual(initial_age(0, NOW + 100, NOW, NOW), 0)  # a Date in the future
        self.assertEqual(initial_age(0, None, NOW, NOW), 0)


class EntryTests(SynchronousTestCase):
    """Stored responses."""

    def test_fields_kept(self) -> None:
        """Age, X-Request-ID and the cache's own fields are not stored."""
        made = entry(
            fields=(
                (b"Cache-Control", b"max-age=60"),
                (b"Age", b"3"),
                (b"X-Request-ID", b"r"),
                (b"X-Cache", b"MISS"),
                (b"X-App", b"1"),
            )
        )
        self.assertEqual(made.fields, [(b"Cache-Control", b"max-age=60"), (b"X-App", b"1")])
        self.assertEqual(made.born, NOW - 3)

    def test_serialise(self) -> None:
        """An entry survives the trip through bytes."""
        made = entry(fields=((b"Cache-Control", b"max-age=60, stale-if-error=5"), (b"ETag", b'"x"')))
        copy = Entry.deserialise(made.serialise())
        for name in ("key", "primary", "path", "status", "reason", "fields", "body", "born", "expires", "etag"):
            self.assertEqual(getattr(copy, name), getattr(made, name), name)
        self.assertEqual(copy.stale_if_error, 5)

    def test_not_an_entry(self) -> None:
        """Other bytes are refused."""
        self.assertRaises(ValueError, Entry.deserialise, b"junk")

    def test_updated(self) -> None:
        """A 304 replaces fields, keeps framing and the body, and restarts the clock."""
        made = entry(fields=((b"Cache-Control", b"max-age=60"), (b"ETag", b'W/"x"'), (b"Content-Encoding", b"br")))
        later = made.updated(
            [(b"Cache-Control", b"max-age=5"), (b"ETag", b'"x"'), (b"Content-Encoding", b"identity")],
            NOW + 100,
            NOW + 100,
            0,
            0,
        )
        self.assertEqual(later.body, b"body")
        self.assertEqual(later.etag, b'W/"x"')
        self.assertIn((b"Content-Encoding", b"br"), later.fields)
        self.assertEqual((later.born, later.expires), (NOW + 100, NOW + 105))

    def test_keep_for(self) -> None:
        """Fresh time plus the stale allowances, unless must-revalidate."""
        made = entry(fields=((b"Cache-Control", b"max-age=60, stale-while-revalidate=30, stale-if-error=100"),))
        self.assertEqual(made.keep_for(NOW), 160)
        strict = entry(fields=((b"Cache-Control", b"max-age=60, must-revalidate, stale-if-error=100"),))
        self.assertEqual(strict.keep_for(NOW), 60)


class MemoryTierTests(SynchronousTestCase):
    """The in-memory tier."""

    def test_lru(self) -> None:
        """The least recently used goes first once over max_bytes."""
        size = entry().size
        tier = MemoryTier(size * 2)
        tier.put(entry("http://h/a"))
        tier.put(entry("http://h/b"))
        tier.get("http://h/a")
        tier.put(entry("http://h/c"))
        self.assertIsNone(tier.get("http://h/b"))
        self.assertIsNotNone(tier.get("http://h/a"))
        self.assertEqual(tier.bytes, size * 2)

    def test_too_big_for_the_tier(self) -> None:
        """An entry larger than the whole tier is not kept."""
        tier = MemoryTier(10)
        tier.put(entry())
        self.assertEqual((len(tier), tier.bytes), (0, 0))

    def test_replace(self) -> None:
        """A new entry under a key replaces the old, bytes counted once."""
        tier = MemoryTier(10**6)
        tier.put(entry(body=b"1"))
        tier.put(entry(body=b"22"))
        self.assertEqual((len(tier), tier.bytes), (1, entry(body=b"22").size))

    def test_variants(self) -> None:
        """Variants are found through the Vary of the primary key; a plain entry replaces them."""
        tier = MemoryTier(10**6)
        vary = ((b"Cache-Control", b"max-age=60"), (b"Vary", b"Origin"))
        tier.put(entry("http://h/a\na", fields=vary))
        tier.put(entry("http://h/a\nb", fields=vary))
        found = tier.find("http://h/a", Headers([(b"Origin", b"b")]))
        self.assertEqual(found.key, "http://h/a\nb")
        tier.put(entry("http://h/a"))
        self.assertEqual(len(tier), 1)
        self.assertEqual(tier.remove_primary("http://h/a"), 1)

    def test_resize(self) -> None:
        """A smaller max_bytes evicts at once."""
        tier = MemoryTier(10**6)
        tier.put(entry("http://h/a"))
        tier.put(entry("http://h/b"))
        tier.resize(entry().size)
        self.assertEqual(len(tier), 1)
