"""Where pion/turn (LiveKit's built-in TURN) and coturn differ, each server's behaviour pinned
down: first on the wire (raw STUN, so a change in either server shows here first), then in what
lkice reports. Every test runs against both servers and states what each does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aioice import stun
from aioice.turn import make_integrity_key

from lkice.credentials import Secret, TurnCredentials, rest_credentials
from lkice.engine import EngineSettings, run
from lkice.findings import evaluate
from lkice.lab.pion import PionConfig, PionTurn
from lkice.lab.pki import LabPki
from lkice.probe.path import ProbeSettings
from lkice.report import PathResult, Report
from lkice.uri import parse_ice_uri
from tests.conftest import (
    SECOND_USER,
    TurnKind,
    TurnLab,
    needs_pion,
    validate_report,
)

COTURN_SOFTWARE = "Coturn-4.6.1"
REQUESTED_UDP = 17 << 24


# -- raw STUN ------------------------------------------------------------------------------------


class Raw:
    """Blocking STUN transactions from one local UDP port, with long-term credentials once a
    401 has handed out a realm and nonce."""

    def __init__(self, port: int, timeout: float = 1.0) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.realm = ""
        self.nonce = b""

    def close(self) -> None:
        self.sock.close()

    def request(self, msg: stun.Message) -> stun.Message | None:
        """The answer to ``msg``, or None when none comes within the timeout."""
        self.sock.sendto(bytes(msg), self.server)
        try:
            while True:
                answer = stun.parse_message(self.sock.recv(4096))
                if answer.transaction_id == msg.transaction_id:
                    return answer
        except TimeoutError:
            return None

    def challenge(self) -> stun.Message:
        answer = self.request(allocate_request())
        assert answer is not None
        self.realm, self.nonce = answer.attributes["REALM"], answer.attributes["NONCE"]
        return answer

    def signed(self, msg: stun.Message, user: str, password: str) -> stun.Message | None:
        msg.attributes.update(USERNAME=user, REALM=self.realm, NONCE=self.nonce)
        msg.add_message_integrity(make_integrity_key(user, self.realm, password))
        return self.request(msg)


def allocate_request(lifetime: int | None = None) -> stun.Message:
    attrs: dict[str, Any] = {"REQUESTED-TRANSPORT": REQUESTED_UDP}
    if lifetime is not None:
        attrs["LIFETIME"] = lifetime
    return stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST, attributes=attrs)


def refresh_request(lifetime: int) -> stun.Message:
    return stun.Message(stun.Method.REFRESH, stun.Class.REQUEST, attributes={"LIFETIME": lifetime})


@pytest.fixture
def raw(turn_server: TurnLab) -> Iterator[Raw]:
    client = Raw(turn_server.port)
    try:
        yield client
    finally:
        client.close()


def test_software_and_fingerprint(turn_server: TurnLab, raw: Raw) -> None:
    """coturn puts SOFTWARE and FINGERPRINT on every message; pion/turn puts FINGERPRINT on
    Binding responses only and SOFTWARE on nothing."""
    binding = raw.request(stun.Message(stun.Method.BINDING, stun.Class.REQUEST))
    challenge = raw.challenge()
    allocated = raw.signed(allocate_request(), turn_server.user, turn_server.password)
    released = raw.signed(refresh_request(0), turn_server.user, turn_server.password)
    assert binding is not None
    assert allocated is not None
    assert released is not None
    others = (challenge, allocated, released)
    if turn_server.name == "coturn":
        for msg in (binding, *others):
            assert str(msg.attributes["SOFTWARE"]).startswith(COTURN_SOFTWARE)
            assert "FINGERPRINT" in msg.attributes
        # coturn answers Binding with RFC 5780's RESPONSE-ORIGIN and the old MAPPED-ADDRESS too.
        assert {"MAPPED-ADDRESS", "RESPONSE-ORIGIN"} <= set(binding.attributes)
    else:
        assert set(binding.attributes) == {"XOR-MAPPED-ADDRESS", "FINGERPRINT"}
        for msg in others:
            assert "SOFTWARE" not in msg.attributes
            assert "FINGERPRINT" not in msg.attributes


@pytest.mark.parametrize("wrong", ["password", "user"])
def test_refused_credentials_on_the_wire(turn_server: TurnLab, raw: Raw, wrong: str) -> None:
    """coturn repeats 401 'Unauthorized' with a fresh REALM and NONCE; pion/turn answers 400
    with an empty reason and nothing else, for an unknown user and a wrong password alike."""
    challenge = raw.challenge()
    user, password = (
        (turn_server.user, "wrong") if wrong == "password" else ("mallory", turn_server.password)
    )
    answer = raw.signed(allocate_request(), user, password)
    assert answer is not None
    assert answer.message_class == stun.Class.ERROR
    if turn_server.name == "coturn":
        assert challenge.attributes["ERROR-CODE"] == (401, "Unauthorized")
        assert answer.attributes["ERROR-CODE"] == (401, "Unauthorized")
        assert {"REALM", "NONCE"} <= set(answer.attributes)
    else:
        assert challenge.attributes["ERROR-CODE"] == (401, "")
        assert set(answer.attributes) == {"ERROR-CODE"}
        assert answer.attributes["ERROR-CODE"] == (400, "")


@pytest.mark.parametrize("first", ["unknown user", "wrong password", "other user"])
def test_a_second_username_on_the_same_five_tuple(
    turn_server: TurnLab, raw: Raw, first: str
) -> None:
    """coturn ties a 5-tuple to the first USERNAME it authenticates there, even a refused one:
    after an unknown user, the right credentials on the same 5-tuple get 437 'Allocation
    mismatch: wrong credentials' (a client that retries with another username, such as another
    TURN REST form, must do so from a new local port). A wrong password for the same user does
    not tie it. pion/turn ties nothing: only a live allocation gets 437."""
    raw.challenge()
    user, password = turn_server.user, turn_server.password
    sent = {
        "unknown user": ("mallory", password),
        "wrong password": (user, "wrong"),
        "other user": next(iter(SECOND_USER.items())),
    }[first]
    refused = raw.signed(allocate_request(), *sent)
    assert refused is not None
    if first == "other user":
        assert refused.message_class == stun.Class.RESPONSE  # a user on both servers
    else:
        assert refused.message_class == stun.Class.ERROR
    answer = raw.signed(allocate_request(), user, password)
    assert answer is not None
    code = answer.attributes.get("ERROR-CODE", (None, ""))
    if first == "other user":
        assert code[0] == 437  # the other user's allocation holds the 5-tuple, on both
    elif turn_server.name == "coturn" and first == "unknown user":
        assert code == (437, "Allocation mismatch: wrong credentials\x00\x00")
    else:
        assert answer.message_class == stun.Class.RESPONSE
    for creds in (sent, (user, password)):
        raw.signed(refresh_request(0), *creds)


def test_stale_nonce_and_unsupported_transport(turn_server: TurnLab, raw: Raw) -> None:
    """Both answer an unknown nonce with 438 and a fresh nonce; a TCP relay (RFC 6062) request
    gets 442 from pion/turn and 400 from coturn (whose reason phrases end in NUL padding)."""
    raw.challenge()
    nonce, raw.nonce = raw.nonce, b"not-a-nonce"
    stale = raw.signed(allocate_request(), turn_server.user, turn_server.password)
    assert stale is not None
    assert stale.attributes["ERROR-CODE"][0] == 438
    assert {"REALM", "NONCE"} <= set(stale.attributes)
    raw.nonce = nonce
    tcp_relay = stun.Message(
        stun.Method.ALLOCATE, stun.Class.REQUEST, attributes={"REQUESTED-TRANSPORT": 6 << 24}
    )
    answer = raw.signed(tcp_relay, turn_server.user, turn_server.password)
    assert answer is not None
    code, reason = answer.attributes["ERROR-CODE"]
    if turn_server.name == "coturn":
        assert stale.attributes["ERROR-CODE"] == (438, "Stale nonce\x00")
        assert (code, reason) == (400, "Wrong Transport Data")
    else:
        assert (code, reason) == (442, "")


@pytest.mark.parametrize(
    ("asked", "coturn_grants", "pion_grants"), [(30, 600, 30), (7200, 3600, 600)]
)
def test_granted_lifetime(
    turn_server: TurnLab, raw: Raw, asked: int, coturn_grants: int, pion_grants: int
) -> None:
    """coturn clamps a requested LIFETIME to [600, 3600] s; pion/turn grants anything below an
    hour as asked and replaces an hour or more with its default of 600 s."""
    raw.challenge()
    answer = raw.signed(allocate_request(asked), turn_server.user, turn_server.password)
    assert answer is not None
    assert answer.message_class == stun.Class.RESPONSE
    expected = coturn_grants if turn_server.name == "coturn" else pion_grants
    assert answer.attributes["LIFETIME"] == expected
    raw.signed(refresh_request(0), turn_server.user, turn_server.password)


def test_requests_without_an_allocation(turn_server: TurnLab, raw: Raw) -> None:
    """coturn answers 437 to a Refresh without an allocation and 400 to a CreatePermission;
    pion/turn answers neither (the client waits out its timeout) except Refresh(0), which it
    confirms as if something had been released."""
    raw.challenge()
    creds = (turn_server.user, turn_server.password)
    refresh = raw.signed(refresh_request(600), *creds)
    release = raw.signed(refresh_request(0), *creds)
    permission = raw.signed(
        stun.Message(
            stun.Method.CREATE_PERMISSION,
            stun.Class.REQUEST,
            attributes={"XOR-PEER-ADDRESS": ("127.0.0.1", 9)},
        ),
        *creds,
    )
    if turn_server.name == "coturn":
        assert refresh is not None
        assert release is not None
        assert permission is not None
        assert refresh.attributes["ERROR-CODE"][0] == 437
        assert release.attributes["ERROR-CODE"][0] == 437
        assert permission.attributes["ERROR-CODE"][0] == 400
    else:
        assert refresh is None
        assert permission is None
        assert release is not None
        assert release.message_class == stun.Class.RESPONSE
        assert release.attributes["LIFETIME"] == 0


def test_allocation_mismatch_and_release(turn_server: TurnLab, raw: Raw) -> None:
    """Both answer a second Allocate on a held 5-tuple with 437 and a retransmission with the
    cached success. After Refresh(0) pion/turn frees the 5-tuple at once; coturn still answers
    437 until its next 1-second timer tick."""
    raw.challenge()
    creds = (turn_server.user, turn_server.password)
    first = allocate_request()
    allocated = raw.signed(first, *creds)
    again = raw.signed(allocate_request(), *creds)
    retransmitted = raw.request(first)
    assert allocated is not None
    assert again is not None
    assert retransmitted is not None
    assert again.attributes["ERROR-CODE"][0] == 437
    assert retransmitted.message_class == stun.Class.RESPONSE
    assert (
        retransmitted.attributes["XOR-RELAYED-ADDRESS"]
        == (allocated.attributes["XOR-RELAYED-ADDRESS"])
    )
    released = raw.signed(refresh_request(0), *creds)
    assert released is not None
    assert released.message_class == stun.Class.RESPONSE
    after = raw.signed(allocate_request(), *creds)
    assert after is not None
    if turn_server.name == "coturn":
        assert again.attributes["ERROR-CODE"] == (
            437,
            "Mismatched allocation: wrong transaction ID\x00",
        )
        assert after.attributes["ERROR-CODE"][0] == 437
    else:
        assert again.attributes["ERROR-CODE"] == (437, "")
        assert after.message_class == stun.Class.RESPONSE
        raw.signed(refresh_request(0), *creds)


def test_permission_send_and_data(turn_server: TurnLab) -> None:
    """CreatePermission, Send and Data indications work alike on both; coturn adds SOFTWARE and
    FINGERPRINT to the Data indication, pion/turn sends XOR-PEER-ADDRESS and DATA only."""
    a, b = Raw(turn_server.port), Raw(turn_server.port)
    creds = (turn_server.user, turn_server.password)
    try:
        relayed = []
        for client in (a, b):
            client.challenge()
            answer = client.signed(allocate_request(), *creds)
            assert answer is not None
            relayed.append(answer.attributes["XOR-RELAYED-ADDRESS"])
        for client, peer in ((a, relayed[1]), (b, relayed[0])):
            permit = stun.Message(
                stun.Method.CREATE_PERMISSION,
                stun.Class.REQUEST,
                attributes={"XOR-PEER-ADDRESS": peer},
            )
            answer = client.signed(permit, *creds)
            assert answer is not None
            assert answer.message_class == stun.Class.RESPONSE
        send = stun.Message(
            stun.Method.SEND,
            stun.Class.INDICATION,
            attributes={"XOR-PEER-ADDRESS": relayed[1], "DATA": b"hello"},
        )
        a.sock.sendto(bytes(send), a.server)
        data = stun.parse_message(b.sock.recv(4096))
        assert data.message_method == stun.Method.DATA
        assert data.attributes["DATA"] == b"hello"
        assert data.attributes["XOR-PEER-ADDRESS"] == relayed[0]
        if turn_server.name == "coturn":
            assert {"SOFTWARE", "FINGERPRINT"} <= set(data.attributes)
        else:
            assert set(data.attributes) == {"XOR-PEER-ADDRESS", "DATA"}
        for client in (a, b):
            client.signed(refresh_request(0), *creds)
    finally:
        a.close()
        b.close()


def _stream_request(sock: socket.socket, msg: stun.Message) -> stun.Message | None:
    """One STUN transaction on a TCP socket; None if the server closed or reset it."""
    try:
        sock.sendall(bytes(msg))
        data = sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return None
    return stun.parse_message(data) if data else None


def test_stream_after_release(turn_server: TurnLab) -> None:
    """coturn closes a TCP control connection once its allocation is released (path.py runs
    the trains before the release for this reason); pion/turn keeps it open and answering."""
    creds = (turn_server.user, turn_server.password)
    with socket.create_connection(("127.0.0.1", turn_server.port), timeout=2.0) as sock:
        challenge = _stream_request(sock, allocate_request())
        assert challenge is not None
        realm, nonce = challenge.attributes["REALM"], challenge.attributes["NONCE"]
        key = make_integrity_key(creds[0], realm, creds[1])
        for msg in (allocate_request(), refresh_request(0)):
            msg.attributes.update(USERNAME=creds[0], REALM=realm, NONCE=nonce)
            msg.add_message_integrity(key)
            answer = _stream_request(sock, msg)
            assert answer is not None
            assert answer.message_class == stun.Class.RESPONSE
        time.sleep(1.5)  # past coturn's 1-second timer tick
        after = _stream_request(sock, stun.Message(stun.Method.BINDING, stun.Class.REQUEST))
    if turn_server.name == "coturn":
        assert after is None
    else:
        assert after is not None
        assert after.message_class == stun.Class.RESPONSE


# -- REST credentials ------------------------------------------------------------------------------


def bare_expiry_credentials(secret: str, ttl_s: int = 600) -> TurnCredentials:
    """TURN REST credentials as pion's turn.NewLongTermAuthHandler expects them (and as
    turn.GenerateLongTermCredentials makes them): username = the expiry alone."""
    username = str(int(time.time()) + ttl_s)
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(Secret(username), Secret(base64.b64encode(digest).decode()), "rest")


async def probe(uri: str, creds: TurnCredentials | None, timeout: float = 3.0) -> Report:
    settings = EngineSettings(
        probe=ProbeSettings(udp_timeout=2.0, timeout=timeout, credentials=creds), deadline=15.0
    )
    report = await run([parse_ice_uri(uri)], settings)
    validate_report(report.to_dict())
    return report


def only(report: Report) -> PathResult:
    assert len(report.paths) == 1, report.paths
    return report.paths[0]


async def test_bare_expiry_rest_username_is_accepted_by_both(turn_kind: TurnKind) -> None:
    """pion's own REST handler (the server's default form) and coturn's use-auth-secret both
    accept a username that is the expiry alone: coturn takes the user part as optional."""
    secret = secrets.token_urlsafe(16)
    with turn_kind.server(static_auth_secret=secret, rest_form="pion") as server:
        report = await probe(
            f"turn:127.0.0.1:{server.port}?transport=udp", bare_expiry_credentials(secret)
        )
    assert only(report).ok, only(report).error


async def test_expiry_user_rest_username_against_each_servers_own_handler(
    turn_kind: TurnKind, request: pytest.FixtureRequest
) -> None:
    """lkice's --turn-secret sends coturn's ``expiry:user`` form. coturn accepts it; pion's
    NewLongTermAuthHandler parses the whole username as a number, refuses it (its log says
    'Invalid time-windowed username') and answers a bare 400, so lkice now reports
    ``protocol`` '400: unexpected error response' for a secret that is right."""
    secret = secrets.token_urlsafe(16)
    with turn_kind.server(static_auth_secret=secret, rest_form="pion") as server:
        report = await probe(
            f"turn:127.0.0.1:{server.port}?transport=udp", rest_credentials(Secret(secret))
        )
    path = only(report)
    assert path.auth == "rest"
    # Either may be the fix: the right secret works, or its refusal names the username form.
    if not path.ok:
        assert path.error is not None
        assert path.error.kind == "auth_rejected", path.error
        assert "expiry" in path.error.message or "form" in path.error.message, path.error


# -- what lkice reports on mismatched ports ------------------------------------------------------


def findings_text(report: Report) -> str:
    return " ".join(
        f"{f['summary']} {f['advice']}" for f in evaluate(report.to_dict()) if f["id"] != "works"
    )


async def test_plain_tcp_to_the_tls_port(
    turn_server: TurnLab, request: pytest.FixtureRequest
) -> None:
    """coturn also speaks plain STUN on its TLS port, so the path works. pion/turn's TLS
    listener waits for a ClientHello forever: TCP connects, no STUN answer ever comes and the
    connection is never closed; lkice says tcp_no_response, and its findings blame a firewall
    that silently drops the traffic although TCP connected."""
    report = await probe(
        f"turn:127.0.0.1:{turn_server.tls_port}?transport=tcp",
        TurnCredentials(Secret(turn_server.user), Secret(turn_server.password)),
        timeout=1.0,
    )
    path = only(report)
    if turn_server.name == "coturn":
        assert path.ok, path.error
        return
    assert path.error is not None
    assert path.error.kind == "tcp_no_response"
    assert path.error.phase == "allocate_challenge"  # a TURN path's first request
    assert path.timings_ms["connect"] is not None
    assert "accepted the TCP connection" in path.error.message
    assert "silently drops" not in findings_text(report)


async def test_tls_to_the_plain_port(
    turn_server: TurnLab, pki: LabPki, request: pytest.FixtureRequest
) -> None:
    """coturn detects TLS on its plain port and completes the handshake. pion/turn's TCP
    listener reads the ClientHello as STUN, drops it and says nothing: the handshake times out,
    which lkice reports as 'closed or reset (ConnectionAbortedError)'."""
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=str(pki.ca_file))
    settings = EngineSettings(
        probe=ProbeSettings(
            timeout=1.0,
            tls_context=ctx,
            credentials=TurnCredentials(Secret(turn_server.user), Secret(turn_server.password)),
        ),
        deadline=10.0,
    )
    report = await run([parse_ice_uri(f"turns:127.0.0.1:{turn_server.port}")], settings)
    path = only(report)
    if turn_server.name == "coturn":
        assert path.ok, path.error
        return
    assert path.error is not None
    assert path.error.phase == "tls"
    assert path.error.kind == "tls_handshake"
    assert "closed or reset" not in path.error.message


@needs_pion
async def test_plain_tcp_to_the_tls_port_of_a_pion_that_closes(pki: LabPki) -> None:
    """pion/turn v4 closes a connection once a read on it fails (``close_on_read_error``
    imitates that): crypto/tls refuses the STUN bytes at once, and lkice reports
    connection_closed within milliseconds instead of waiting out its stream timeout."""
    config = PionConfig(users={"u": "p"}, pki=pki, close_on_read_error=True)
    with PionTurn(config) as server:
        start = time.monotonic()
        report = await probe(
            f"turn:127.0.0.1:{server.tls_port}?transport=tcp",
            TurnCredentials(Secret("u"), Secret("p")),
            timeout=3.0,
        )
        elapsed = time.monotonic() - start
    path = only(report)
    assert path.error is not None
    assert path.error.kind == "connection_closed"
    assert path.error.phase == "allocate_challenge"  # a TURN path's first request
    assert path.timings_ms["connect"] is not None
    assert elapsed < 3.0  # decided by the close, not by the 3 s timeout
