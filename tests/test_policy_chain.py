"""
Tests for L{gatewaykit.policies.chain}: policies run in order before the
action, may answer, may be asynchronous, and may act on the response.
"""

import json

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatewaykit.config.model import PolicyConfig, RespondAction
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.message import Response
from gatewaykit.http.stream import StreamWrapper
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.chain import LATER, PolicyCall
from gatewaykit.testing import GatewayHarness, make_config, parse_response, route


@implementer(IPolicy)
class ScriptedPolicy:
    """Does what its options say, and records the calls it saw."""

    def __init__(self, name: str, options: dict, log: list) -> None:
        self.name = name
        self.options = options
        self.log = log
        self.pending: list[Deferred] = []
        self.calls: list[PolicyCall] = []  # the ones it will resume

    def on_request(self, call: PolicyCall):
        self.log.append(self.name)
        behaviour = self.options.get("do")
        if behaviour == "answer":
            return GatewayError(403, "forbidden", f"{self.name} says no")
        if behaviour == "respond":
            return Response(204, [(b"X-From", self.name.encode())])
        if behaviour == "later":
            d = Deferred()
            self.pending.append(d)
            return d
        if behaviour == "resume":
            self.calls.append(call)
            return LATER
        if behaviour == "header":
            call.request.headers.add("X-Seen-By", self.name)
            call.on_response(lambda status, fields: fields.append((b"X-Hook", self.name.encode())))
        if behaviour == "upper":
            call.wrap_stream(UpperCase)
        if behaviour == "echo-seen":
            return Response(200, [], call.request.headers.get("x-seen-by") or b"")
        if behaviour == "now":
            return succeed(None)
        if behaviour == "crash":
            raise RuntimeError("boom")
        return None


class UpperCase(StreamWrapper):
    """Upper-cases the response body."""

    def write(self, data: bytes) -> None:
        self.inner.write(data.upper())


@implementer(IPolicyFactory)
class ScriptedFactory:
    name = "test.scripted"
    options = None

    def __init__(self) -> None:
        self.log: list[str] = []
        self.built: dict[str, ScriptedPolicy] = {}

    def build(self, name, options, context):
        policy = ScriptedPolicy(name, options, self.log)
        self.built[name] = policy
        return policy


def harness(*behaviours: str) -> tuple[GatewayHarness, ScriptedFactory]:
    factory = ScriptedFactory()
    names = [f"p{i}" for i in range(len(behaviours))]
    config = make_config(
        routes=[route("r", path_prefix="/", respond=RespondAction(200, "body"), policies=tuple(names))],
        policies=[
            PolicyConfig(name, "test.scripted", {"do": behaviour})
            for name, behaviour in zip(names, behaviours, strict=True)
        ],
    )
    return GatewayHarness(config, policy_types={"test.scripted": factory}), factory


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


class PolicyChainTests(SynchronousTestCase):
    """The chain's contract."""

    def test_in_order_then_action(self):
        """Policies run in the order the route lists them, then the action."""
        gateway, factory = harness("none", "none", "none")
        response = gateway.request(GET)
        self.assertEqual(factory.log, ["p0", "p1", "p2"])
        self.assertEqual(response.body, b"body")

    def test_answer_stops_chain(self):
        """A policy's answer is sent and later policies and the action don't run."""
        gateway, factory = harness("none", "answer", "none")
        response = gateway.request(GET)
        self.assertEqual(factory.log, ["p0", "p1"])
        self.assertEqual(response.status, 403)
        self.assertEqual(json.loads(response.body)["detail"], "p1 says no")

    def test_response_answer(self):
        """A policy may answer with a whole Response."""
        gateway, _ = harness("respond")
        response = gateway.request(GET)
        self.assertEqual((response.status, response.headers.get("x-from")), (204, b"p0"))
        self.assertIsNotNone(response.headers.get("x-request-id"))

    def test_asynchronous(self):
        """A Deferred holds the chain until it fires with None."""
        gateway, factory = harness("later", "none")
        protocol, transport = gateway.connect()
        protocol.dataReceived(GET)
        self.assertEqual((factory.log, transport.value()), (["p0"], b""))
        factory.built["p0"].pending[0].callback(None)
        self.assertEqual(factory.log, ["p0", "p1"])
        self.assertEqual(parse_response(transport.value()).body, b"body")

    def test_asynchronous_answer(self):
        """A Deferred firing with an answer sends it."""
        gateway, factory = harness("later", "none")
        protocol, transport = gateway.connect()
        protocol.dataReceived(GET)
        factory.built["p0"].pending[0].callback(GatewayError(401, "unauthorized", "no"))
        self.assertEqual(parse_response(transport.value()).status, 401)
        self.assertEqual(factory.log, ["p0"])

    def test_client_gone_while_waiting(self):
        """If the client left while a policy waited, nothing more runs."""
        gateway, factory = harness("later", "none")
        protocol, transport = gateway.connect()
        protocol.dataReceived(GET)
        protocol.connectionLost(None)
        factory.built["p0"].pending[0].callback(None)
        self.assertEqual(factory.log, ["p0"])

    def test_request_decorated(self):
        """Changes a policy makes to the request are seen by later steps."""
        gateway, _ = harness("header", "echo-seen")
        self.assertEqual(gateway.request(GET).body, b"p0")

    def test_response_hook(self):
        """A response hook changes the response head, answers included."""
        gateway, _ = harness("header")
        self.assertEqual(gateway.request(GET).headers.get("x-hook"), b"p0")
        gateway, _ = harness("header", "answer")
        response = gateway.request(GET)
        self.assertEqual((response.status, response.headers.get("x-hook")), (403, b"p0"))

    def test_stream_wrapper(self):
        """A policy can wrap the stream and change the body."""
        gateway, _ = harness("upper")
        self.assertEqual(gateway.request(GET).body, b"BODY")

    def test_crash_is_500(self):
        """A policy raising an exception gives a 500 and the connection carries on."""
        gateway, _ = harness("crash")
        protocol, transport = gateway.connect()
        protocol.dataReceived(GET)
        self.assertEqual(parse_response(transport.value()).status, 500)
        self.assertFalse(transport.write_closed)
        self.flushLoggedErrors(RuntimeError)

    def test_failed_deferred_is_500(self):
        """A policy's Deferred failing gives a 500."""
        gateway, factory = harness("later")
        protocol, transport = gateway.connect()
        protocol.dataReceived(GET)
        factory.built["p0"].pending[0].errback(RuntimeError("boom"))
        self.assertEqual(parse_response(transport.value()).status, 500)
        self.flushLoggedErrors(RuntimeError)

    def test_policy_provides_interface(self):
        """The test policy is a fair stand-in: it provides IPolicy."""
        verifyObject(IPolicy, ScriptedPolicy("p", {}, []))
        verifyObject(IPolicyFactory, ScriptedFactory())

    def test_fired_deferred_goes_on_at_once(self):
        """An already-fired Deferred lets the chain go on without waiting."""
        gateway, factory = harness("now", "none")
        response = gateway.request(GET)
        self.assertEqual((factory.log, response.body), (["p0", "p1"], b"body"))


class ResumeTests(SynchronousTestCase):
    """A policy returning LATER holds the chain until it calls resume."""

    def waiting(self, *behaviours: str):
        gateway, factory = harness(*behaviours)
        protocol, transport = gateway.connect()
        protocol.dataReceived(GET)
        return factory, protocol, transport

    def test_resume_goes_on(self):
        """resume() lets the request go on to the next policy and the action."""
        factory, _, transport = self.waiting("resume", "header")
        self.assertEqual((factory.log, transport.value()), (["p0"], b""))
        factory.built["p0"].calls[0].resume()
        self.assertEqual(factory.log, ["p0", "p1"])
        response = parse_response(transport.value())
        self.assertEqual((response.body, response.headers.get("x-hook")), (b"body", b"p1"))

    def test_resume_with_answer(self):
        """resume(answer) sends the answer; later policies don't run."""
        factory, _, transport = self.waiting("resume", "none")
        factory.built["p0"].calls[0].resume(GatewayError(429, "rate_limited", "slow down"))
        self.assertEqual(parse_response(transport.value()).status, 429)
        self.assertEqual(factory.log, ["p0"])

    def test_resume_failed_is_500(self):
        """resume_failed(failure) answers 500 and logs the failure."""
        factory, _, transport = self.waiting("resume")
        factory.built["p0"].calls[0].resume_failed(Failure(RuntimeError("store broke")))
        self.assertEqual(parse_response(transport.value()).status, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_crash_after_resume_is_500(self):
        """A later policy raising after resume() gives a 500, not a hung request."""
        factory, _, transport = self.waiting("resume", "crash")
        factory.built["p0"].calls[0].resume()
        self.assertEqual(parse_response(transport.value()).status, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_client_gone_before_resume(self):
        """If the client left while the policy waited, resume() runs nothing more."""
        factory, protocol, transport = self.waiting("resume", "none")
        protocol.connectionLost(None)
        factory.built["p0"].calls[0].resume()
        self.assertEqual(factory.log, ["p0"])
