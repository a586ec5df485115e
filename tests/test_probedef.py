"""Probe definitions (lkice.probedef): the shipped examples validate, every mistake is named with
file, line and key, secrets are references only and are read when the probe runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lkice.probedef import DefinitionError, load, parse, parse_duration, to_request

PROBES = Path(__file__).parent.parent / "probes"


def check(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "probe.toml"
    path.write_text(text)
    with pytest.raises(DefinitionError) as caught:
        load(path)
    return caught.value.problems


@pytest.mark.parametrize("name", ["livekit-cloud", "self-hosted-fleet", "branch-office"])
def test_shipped_examples_validate(name: str) -> None:
    definition = load(PROBES / f"{name}.toml")
    assert definition.name
    assert definition.every_s is not None
    assert definition.targets or definition.regions
    assert definition.labels.get("site")


def test_a_full_definition(tmp_path: Path) -> None:
    path = tmp_path / "office.toml"
    (tmp_path / "secret.txt").write_text("s3cr3t-from-file\n")
    path.write_text(
        """
[probe]
name = "office"
every = "1h30m"
labels = { site = "hh" }

[settings]
deadline_s = 12
quality = { duration_s = 2, interval_ms = 40 }
ca_files = ["ca.pem"]

[credentials]
turn_username = { env = "LKICE_TEST_TURN_USER" }
turn_password = { file = "secret.txt" }

[[targets]]
uri = "turn:turn.example.com:3478"

[[regions]]
name = "us"
uris = ["stun:stun.us.example.com"]
"""
    )
    definition = load(path)
    assert definition.every_s == 5400
    assert definition.ca_files == (tmp_path / "ca.pem",)
    assert (definition.quality_duration_s, definition.quality_interval_ms) == (2, 40)
    assert "s3cr3t" not in repr(definition)  # a reference, not the secret
    with pytest.raises(DefinitionError) as caught:
        to_request(definition)
    assert caught.value.problems == [
        f"{path}: credentials.turn_username ($LKICE_TEST_TURN_USER): environment variable "
        "LKICE_TEST_TURN_USER is not set"
    ]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LKICE_TEST_TURN_USER", "alice")
        request = to_request(definition)
    assert (request.username, request.credential) == ("alice", "s3cr3t-from-file")
    assert request.regions == ("us=stun:stun.us.example.com",)
    assert request.deadline == 12
    assert "s3cr3t" not in repr(request)


def test_every_mistake_is_named_with_its_line(tmp_path: Path) -> None:
    problems = check(
        """[probe]
name = "Bad Name"
every = "soon"
labels = { job = "x", ok = "y" }

[settings]
deadline_s = 9000
colour = "blue"

[credentials]
api_secret = "inline-secret"

[[targets]]
uri = "turn:"

[[regions]]
name = "eu"
uris = []
""",
        tmp_path,
    )
    where = str(tmp_path / "probe.toml")
    expected = [
        (2, "probe.name", "use lower-case"),
        (3, "probe.every", "is not a duration"),
        (4, "probe.labels.job", "reserved"),
        (7, "settings.deadline_s", "out of range"),
        (8, "settings.colour", "unknown key"),
        (11, "credentials.api_secret", "must not be written in the definition"),
        (14, "targets[0].uri", "no host"),
        (18, "regions[0].uris", "non-empty list"),
    ]
    assert len(problems) == len(expected), problems
    for (line, key, words), problem in zip(expected, problems, strict=True):
        assert problem.startswith(f"{where}:{line}: {key}: "), problem
        assert words in problem
    assert "inline-secret" not in "\n".join(problems)


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    problems = check('[probe]\nname = "x"\nevery = \n', tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'probe.toml'}:3: not valid TOML")


def test_missing_name_and_nothing_to_probe(tmp_path: Path) -> None:
    problems = check("[probe]\nevery = '5m'\n", tmp_path)
    assert any("probe.name: missing" in p for p in problems)
    assert any("nothing to probe" in p for p in problems)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as caught:
        load(tmp_path / "absent.toml")
    assert "cannot read" in str(caught.value)


def test_region_credentials_are_per_uri(tmp_path: Path) -> None:
    definition = parse(
        """
[probe]
name = "two"
[[regions]]
name = "eu"
uris = ["turn:eu.example.com", "turns:eu.example.com:443?transport=tcp"]
credentials = { turn_username = { env = "EU_USER" }, turn_password = { env = "EU_PASS" } }
""",
        tmp_path / "two.toml",
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EU_USER", "eu-user")
        env.setenv("EU_PASS", "eu-pass")
        request = to_request(definition)
    assert request.turn_by_uri == {
        "turn:eu.example.com": ("eu-user", "eu-pass"),
        "turns:eu.example.com:443?transport=tcp": ("eu-user", "eu-pass"),
    }


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2m5s", 125)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5 minutes", "-5m", "1d"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_thresholds(tmp_path: Path) -> None:
    definition = parse(
        '[probe]\nname = "t"\n[thresholds]\nrtt_warn_ms = 150\nloss_warn = 0.02\n'
        '[[targets]]\nuri = "stun:stun.example.com"\n',
        tmp_path / "t.toml",
    )
    assert dict(definition.thresholds) == {"rtt_warn_ms": 150.0, "loss_warn": 0.02}
    assert to_request(definition).thresholds == {"rtt_warn_ms": 150.0, "loss_warn": 0.02}
    problems = check(
        '[probe]\nname = "t"\n[thresholds]\nloss_warn = 5\nlatency = 3\n'
        '[[targets]]\nuri = "stun:stun.example.com"\n',
        tmp_path,
    )
    assert any(":4: thresholds.loss_warn: 5 is out of range" in p for p in problems), problems
    assert any(":5: thresholds.latency: unknown key" in p for p in problems), problems
