"""
Tests for L{gatewaykit.routing.paths}.
"""

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.routing.paths import BadPath, normalise_path


class NormalisePathTests(SynchronousTestCase):
    """
    L{normalise_path} decodes unreserved escapes, upper-cases the others and
    removes dot segments, refusing paths that escape the root.
    """

    def test_plain(self) -> None:
        """A path with nothing to normalise comes back unchanged as text."""
        self.assertEqual(normalise_path(b"/users/1"), "/users/1")

    def test_empty(self) -> None:
        """An empty path is the root."""
        self.assertEqual(normalise_path(b""), "/")

    def test_root(self) -> None:
        """The root stays the root."""
        self.assertEqual(normalise_path(b"/"), "/")

    def test_trailing_slash_kept(self) -> None:
        """A trailing slash is significant and kept."""
        self.assertEqual(normalise_path(b"/users/"), "/users/")

    def test_double_slash_kept(self) -> None:
        """Empty segments are not merged."""
        self.assertEqual(normalise_path(b"/a//b"), "/a//b")

    def test_relative_refused(self) -> None:
        """A path not starting with "/" is refused."""
        self.assertRaises(BadPath, normalise_path, b"users")

    def test_relative_with_escape_refused(self) -> None:
        """A path not starting with "/" is refused on the slow path too."""
        self.assertRaises(BadPath, normalise_path, b"a%41")

    def test_asterisk_refused(self) -> None:
        """The asterisk-form target is not a path."""
        self.assertRaises(BadPath, normalise_path, b"*")

    def test_bad_path_is_value_error(self) -> None:
        """L{BadPath} is a L{ValueError}."""
        self.assertTrue(issubclass(BadPath, ValueError))

    def test_unreserved_decoded(self) -> None:
        """Escapes of letters, digits and "-._~" are decoded."""
        self.assertEqual(normalise_path(b"/%41%7a%30%2D%2E%5F%7E"), "/Az0-._~")

    def test_reserved_kept_encoded(self) -> None:
        """Escapes of reserved characters stay escaped, so "%2F" is no "/"."""
        self.assertEqual(normalise_path(b"/a%2Fb%3F"), "/a%2Fb%3F")

    def test_hex_upper_cased(self) -> None:
        """The hex digits of kept escapes are upper-cased."""
        self.assertEqual(normalise_path(b"/a%2fb%c3%a9"), "/a%2Fb%C3%A9")

    def test_percent_sign_kept_encoded(self) -> None:
        """An escaped "%" stays escaped and is not decoded twice."""
        self.assertEqual(normalise_path(b"/100%2541"), "/100%2541")

    def test_invalid_escape_refused(self) -> None:
        """An escape with non-hex digits is refused."""
        self.assertRaises(BadPath, normalise_path, b"/a%zzb")

    def test_truncated_escape_refused(self) -> None:
        """An escape cut short at the end of the path is refused."""
        self.assertRaises(BadPath, normalise_path, b"/a%4")

    def test_lone_percent_refused(self) -> None:
        """A bare "%" is refused."""
        self.assertRaises(BadPath, normalise_path, b"/a%")

    def test_dot_segment_removed(self) -> None:
        """A "." segment is removed."""
        self.assertEqual(normalise_path(b"/a/./b"), "/a/b")

    def test_dot_dot_segment_removed(self) -> None:
        """A ".." segment removes the segment before it."""
        self.assertEqual(normalise_path(b"/a/b/../c"), "/a/c")

    def test_final_dot_keeps_slash(self) -> None:
        """A final "." or ".." leaves a trailing slash, as RFC 3986 does."""
        self.assertEqual(
            (normalise_path(b"/a/."), normalise_path(b"/a/b/..")), ("/a/", "/a/")
        )

    def test_dot_dot_to_root(self) -> None:
        """Climbing back to the root exactly is allowed."""
        self.assertEqual(normalise_path(b"/a/.."), "/")

    def test_dot_names_are_not_dot_segments(self) -> None:
        """Segments merely starting with dots are ordinary names."""
        self.assertEqual(
            normalise_path(b"/.well-known/.../..x"), "/.well-known/.../..x"
        )

    def test_encoded_dot_dot_removed(self) -> None:
        """An encoded "%2e%2e" is decoded first, then removed like ".."."""
        self.assertEqual(normalise_path(b"/a/b/%2e%2E/c"), "/a/c")

    def test_mixed_encoded_dot_dot_removed(self) -> None:
        """A half-encoded ".%2e" counts as ".." too."""
        self.assertEqual(normalise_path(b"/a/b/.%2e/c"), "/a/c")

    def test_escape_above_root_refused(self) -> None:
        """A ".." at the root is refused."""
        self.assertRaises(BadPath, normalise_path, b"/../etc/passwd")

    def test_deep_escape_above_root_refused(self) -> None:
        """More ".." than segments is refused."""
        self.assertRaises(BadPath, normalise_path, b"/a/../../x")

    def test_encoded_escape_above_root_refused(self) -> None:
        """An encoded ".." at the root is refused."""
        self.assertRaises(BadPath, normalise_path, b"/%2e%2e/x")

    def test_non_ascii_bytes_round_trip(self) -> None:
        """Bytes above 0x7F come back as latin-1 text that encodes to them."""
        self.assertEqual(
            normalise_path(b"/caf\xc3\xa9").encode("latin-1"), b"/caf\xc3\xa9"
        )
