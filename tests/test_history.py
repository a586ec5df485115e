"""The JSON Lines history (lkice.history): whole lines only, even with concurrent writers and
after a crash mid-write; bounded by rotation."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from lkice.history import append, read


def report(n: int, pad: int = 0) -> dict[str, object]:
    return {"schema": "lkice.report/1", "n": n, "pad": "x" * pad}


def test_append_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    for n in range(3):
        append(path, report(n))
    assert [r["n"] for r in read(path)] == [0, 1, 2]
    assert path.read_text().count("\n") == 3


def test_a_torn_line_is_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    append(path, report(1))
    with open(path, "a") as f:
        f.write('{"schema": "lkice.report/1", "n": 2, "pa')  # a writer died here
    assert [r["n"] for r in read(path)] == [1]  # readers skip the torn line
    append(path, report(3))
    assert [r["n"] for r in read(path)] == [1, 3]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_rotation_bounds_the_size(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    for n in range(40):
        append(path, report(n, pad=400), max_bytes=4096, keep=2)
    assert path.stat().st_size <= 4096
    first = path.with_name("h.jsonl.1")
    second = path.with_name("h.jsonl.2")
    assert first.stat().st_size <= 4096
    assert not path.with_name("h.jsonl.3").exists()  # keep=2: the oldest were dropped
    numbers = [r["n"] for f in (second, first, path) for r in read(f)]
    assert numbers == sorted(numbers)
    assert numbers[-1] == 39


def _writer(path: str, start: int) -> None:
    for n in range(start, start + 50):
        append(path, report(n, pad=3000), max_bytes=1 << 30)


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(str(path), i * 1000)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    numbers = sorted(int(r["n"]) for r in read(path))  # every line parses
    assert numbers == sorted(n for i in range(4) for n in range(i * 1000, i * 1000 + 50))
