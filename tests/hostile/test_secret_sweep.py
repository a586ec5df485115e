"""Class 13: the seeded-secret sweep. Unique random secrets (TURN username and password, a wrong
password, the LiveKit API secret and a wrong one, a token, a web-proxy password) go through
every command (``run`` against real coturn and the lab LiveKit, right and wrong credentials,
an unreachable server, through a proxy that is not there; ``probe --config``, ``--check``, the
daemon; ``explain`` of a paste lkice made), every output format (text, ``--json``, ``-o``,
``--paste``, ``--html``, history, textfile) and every log level (none, ``-v``, ``-vv``). None
of them appears in any stdout, stderr or written file, in any form cheap to derive."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lkice.lab.coturn import Coturn, CoturnConfig, turnserver_path
from lkice.lab.livekit_server import LabIceServer, LabLiveKit
from lkice.lab.pki import LabPki
from tests.hostile.harness import Arg, Outcome, problems, run_lkice
from tests.hostile.kit import closed_port

pytestmark = pytest.mark.skipif(
    turnserver_path() is None, reason="coturn (turnserver) is not installed: apt-get install coturn"
)


NOT_UTF8 = b"nu" + secrets.token_hex(8).encode() + b"\xff" + secrets.token_hex(8).encode()


def _seed(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@dataclass(frozen=True)
class Seeds:
    turn_user: str = field(default_factory=lambda: _seed("tu"))
    turn_password: str = field(default_factory=lambda: _seed("tp"))
    wrong_password: str = field(default_factory=lambda: _seed("wp"))
    api_key: str = field(default_factory=lambda: "API" + secrets.token_hex(6))
    api_secret: str = field(default_factory=lambda: _seed("as") + secrets.token_hex(8))
    wrong_secret: str = field(default_factory=lambda: _seed("ws") + secrets.token_hex(8))
    proxy_password: str = field(default_factory=lambda: _seed("pp"))

    def all(self) -> list[str]:
        return [
            self.turn_user,
            self.turn_password,
            self.wrong_password,
            self.api_secret,
            self.wrong_secret,
            self.proxy_password,
        ]


@dataclass
class Lab:
    seeds: Seeds
    coturn: Coturn
    livekit: LabLiveKit
    pki: LabPki
    token: str
    token2: str  # a second participant's, same room (--token2)

    @property
    def turn(self) -> list[str]:
        port, tls = self.coturn.port, self.coturn.tls_port
        return [
            f"turn:127.0.0.1:{port}?transport=udp",
            f"turn:127.0.0.1:{port}?transport=tcp",
            f"turns:127.0.0.1:{tls}?transport=tcp",
        ]

    def secrets(self) -> list[str]:
        tokens = (self.token, self.token2)
        return [*self.seeds.all(), *tokens, *(t.rsplit(".", 1)[-1] for t in tokens)]


@pytest.fixture(scope="module")
def lab(pki: LabPki) -> Iterator[Lab]:
    from livekit import api

    seeds = Seeds()
    config = CoturnConfig(users={seeds.turn_user: seeds.turn_password}, pki=pki)
    with Coturn(config) as coturn:
        ice = [
            LabIceServer(
                [
                    f"turn:127.0.0.1:{coturn.port}?transport=udp",
                    f"turn:127.0.0.1:{coturn.port}?transport=tcp",
                ],
                seeds.turn_user,
                seeds.turn_password,
            )
        ]
        with LabLiveKit(api_key=seeds.api_key, api_secret=seeds.api_secret, ice_servers=ice) as lk:
            room = "sweep-" + secrets.token_hex(4)
            token, token2 = (
                api.AccessToken(seeds.api_key, seeds.api_secret)
                .with_identity("sweep-" + secrets.token_hex(4))
                .with_grants(
                    api.VideoGrants(
                        room_join=True, room=room, can_publish=True, can_publish_data=True
                    )
                )
                .to_jwt()
                for _ in range(2)
            )
            yield Lab(seeds, coturn, lk, pki, token, token2)


@dataclass
class Run:
    name: str
    outcome: Outcome
    files: list[Path]


class Sweep:
    """Runs commands in every output variant, each in a directory of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: list[Run] = []

    def run(
        self,
        name: str,
        args: list[Arg],
        *,
        env: dict[str, Arg] | None = None,
        variants: tuple[str, ...] = ("files", "json", "plain"),
        timeout: float = 120,
    ) -> None:
        for variant in variants:
            directory = self.root / f"{name}-{variant}"
            directory.mkdir(parents=True)
            extra: list[Arg] = []
            if variant == "files":
                extra = ["-vv", "-o", str(directory / "r.json"), "--html", str(directory / "r.html"),
                         "--paste", str(directory / "paste.txt")]  # fmt: skip
            elif variant == "json":
                extra = ["-v", "--json"]
            outcome = run_lkice([*args, *extra], env=env, timeout=timeout)
            self.runs.append(Run(f"{name}[{variant}]", outcome, sorted(directory.iterdir())))

    def add(self, name: str, outcome: Outcome, files: list[Path]) -> None:
        self.runs.append(Run(name, outcome, files))

    def find(self, name: str) -> Run:
        return next(r for r in self.runs if r.name == name)


def test_no_seeded_secret_anywhere(lab: Lab, tmp_path: Path) -> None:
    seeds = lab.seeds
    sweep = Sweep(tmp_path)
    quick = ["--quality-duration", "0", "--udp-timeout", "1", "--deadline", "8"]
    ca = ["--ca-file", str(lab.pki.ca_file)]
    proxy = f"http://proxyuser:{seeds.proxy_password}@127.0.0.1:{closed_port()}"
    user, password = seeds.turn_user, seeds.turn_password

    # STUN/TURN against real coturn: right, wrong, from the environment, unreachable, proxied.
    sweep.run("turn-right", ["run", *lab.turn, "-u", user, "-p", password, *ca,
                             "--quality-duration", "0.5", "--udp-timeout", "1"])  # fmt: skip
    sweep.run("turn-wrong", ["run", *lab.turn, "-u", user, "-p", seeds.wrong_password, *ca, *quick])
    sweep.run(
        "turn-env",
        ["run", *lab.turn, *ca, *quick],
        env={"LKICE_TURN_USERNAME": user, "LKICE_TURN_CREDENTIAL": password},
        variants=("files", "plain"),
    )
    sweep.run(
        "turn-unreachable",
        ["run", f"turn:127.0.0.1:{closed_port()}?transport=udp", "-u", user, "-p", password,
         *quick],
        variants=("files", "json"),
    )  # fmt: skip
    sweep.run(
        "turns-proxy",
        ["run", lab.turn[2], "-u", user, "-p", password, *ca, "--proxy", proxy, *quick],
        variants=("files", "json"),
    )

    # A password that is not UTF-8 (argv bytes): refused, never echoed.
    sweep.run(
        "turn-not-utf8",
        ["run", lab.turn[0], "-u", user, "-p", NOT_UTF8, *quick],
        variants=("json", "plain"),
    )

    # LiveKit: minted from key and secret (argv and environment), a token, a wrong secret, and
    # signaling through a proxy that is not there.
    url = lab.livekit.url
    sweep.run("livekit-key", ["run", url, "--api-key", seeds.api_key, "--api-secret",
                              seeds.api_secret, *quick])  # fmt: skip
    sweep.run(
        "livekit-env",
        ["run", url, *quick],
        env={"LIVEKIT_API_KEY": seeds.api_key, "LIVEKIT_API_SECRET": seeds.api_secret},
        variants=("json",),
    )
    sweep.run("livekit-token", ["run", url, "--token", lab.token, *quick])
    # Two tokens (the SFU paths' data round trip), by argv and by the environment.
    sweep.run("livekit-token2", ["run", url, "--token", lab.token, "--token2", lab.token2, *quick])
    sweep.run(
        "livekit-token2-env",
        ["run", url, *quick],
        env={"LIVEKIT_TOKEN": lab.token, "LIVEKIT_TOKEN2": lab.token2},
        variants=("json",),
    )
    sweep.run(
        "livekit-wrong-secret",
        ["run", url, "--api-key", seeds.api_key, "--api-secret", seeds.wrong_secret, *quick],
        variants=("files", "json"),
    )
    sweep.run(
        "livekit-proxy",
        ["run", url, "--token", lab.token, "--proxy", proxy, *quick],
        variants=("files", "json"),
    )

    # Probe definitions: secrets by environment variable and by file.
    (tmp_path / "api-secret.txt").write_text(seeds.api_secret + "\n")
    (tmp_path / "turn-password.txt").write_text(password + "\n")
    definition = tmp_path / "sweep.toml"
    definition.write_text(
        f"""
[probe]
name = "sweep"
[settings]
quality = {{ duration_s = 0 }}
udp_timeout_s = 1
deadline_s = 8
ca_files = ["{lab.pki.ca_file}"]
[credentials]
api_key = {{ env = "SWEEP_KEY" }}
api_secret = {{ file = "api-secret.txt" }}
[[targets]]
uri = "{url}"
[[regions]]
name = "own-turn"
uris = ["{lab.turn[0]}", "{lab.turn[2]}"]
credentials = {{ turn_username = {{ env = "SWEEP_TURN_USER" }}, turn_password = {{ file = "turn-password.txt" }} }}
"""
    )
    probe_env: dict[str, Arg] = {"SWEEP_KEY": seeds.api_key, "SWEEP_TURN_USER": user}
    sweep.run("probe-config", ["probe", "--config", str(definition)], env=probe_env)
    sweep.run(
        "probe-check", ["probe", "--check", str(definition)], env=probe_env, variants=("plain",)
    )
    history, textfile = tmp_path / "history.jsonl", tmp_path / "lkice.prom"
    push = f"http://pushuser:{seeds.proxy_password}@127.0.0.1:{closed_port()}"
    daemon = run_lkice(
        ["probe", "--config", str(definition), "--every", "1s", "--max-runs", "1", "-vv",
         "--history", str(history), "--textfile", str(textfile), "--push", push],
        env=probe_env,
        timeout=120,
    )  # fmt: skip
    sweep.add("probe-daemon", daemon, [history, textfile])

    (tmp_path / "token.txt").write_text(lab.token + "\n")
    (tmp_path / "token2.txt").write_text(lab.token2 + "\n")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f"""
[probe]
name = "sweep-tokens"
[settings]
quality = {{ duration_s = 0 }}
udp_timeout_s = 1
deadline_s = 8
[credentials]
token = {{ file = "token.txt" }}
token2 = {{ file = "token2.txt" }}
[[targets]]
uri = "{url}"
"""
    )
    sweep.run("probe-tokens", ["probe", "--config", str(tokens)], variants=("files", "json"))

    # explain: the paste of a LiveKit run, as support staff reads it, in every format.
    paste = tmp_path / "livekit-key-files" / "paste.txt"
    explained = tmp_path / "explained"
    explained.mkdir()
    for variant, extra in (
        ("plain", []),
        ("json", ["--json"]),
        ("files", ["-o", str(explained / "e.json"), "--html", str(explained / "e.html")]),
    ):
        outcome = run_lkice(["explain", str(paste), *extra], timeout=60)
        sweep.add(f"explain[{variant}]", outcome, sorted(explained.iterdir()))

    # The sweep must have exercised something: the right credentials worked.
    failures: list[str] = []
    right = sweep.find("turn-right[json]").outcome.report or {}
    usable = [p for p in right.get("paths") or [] if p.get("ok") and p.get("kind") == "turn"]
    if not usable:
        failures.append("sanity: no TURN path worked with the right credentials")
    joined = (sweep.find("livekit-key[json]").outcome.report or {}).get("signal") or {}
    if not joined.get("ok"):
        failures.append(f"sanity: the lab LiveKit join failed: {joined.get('error')}")
    two = sweep.find("livekit-token2[json]").outcome.report or {}
    if not any((p.get("sfu") or {}).get("participants") == 2 for p in two.get("paths") or []):
        failures.append("sanity: --token2 seated no second participant")
    if not paste.exists():
        failures.append("sanity: the LiveKit run wrote no paste to explain")
    for run in sweep.runs:
        if run.outcome.timed_out or run.outcome.status < 0:
            failures.append(f"{run.name}: did not finish ({run.outcome.describe()})")
        for problem in problems(run.outcome, secrets=lab.secrets(), files=run.files):
            failures.append(f"{run.name}: {problem}")
    print(f"\nsecret sweep: {len(sweep.runs)} runs, {len(failures)} problems")
    assert not failures, "\n".join(failures)
