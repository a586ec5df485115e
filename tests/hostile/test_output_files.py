"""Class 10: output files that cannot be written. An unwritable ``-o``, ``--html`` or
``--paste`` path does not throw the report away: it is still printed on stdout, stderr names the
file that failed, and the exit status is 3. On a full disk (a 12 KiB tmpfs, root only) no
0-byte or truncated file is left where a good one was: the old file stays whole, or the new
one replaces it whole."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.hostile.harness import Checks, run_lkice
from tests.hostile.kit import StunServer


@pytest.mark.parametrize("option", ["-o", "--html", "--paste"])
def test_unwritable_output_keeps_the_report(option: str) -> None:
    target = "/nonexistent-dir/report.out"
    with StunServer() as server:
        outcome = run_lkice(
            ["run", server.uri, "--quality-duration", "0", option, target], timeout=60
        )
        host, port = server.address
    check = Checks(outcome, f"unwritable[{option}]")
    check.that(outcome.status == 3, f"exit status {outcome.status} (expected 3)")
    check.that(
        f"{host}:{port}" in outcome.stdout,
        "the report is not on stdout (it was thrown away with the file)",
    )
    check.that(target in outcome.stderr, f"stderr does not name {target}")
    check.clean()
    check.done()


OLD = '{"schema": "lkice.report/1", "note": "the previous good report"}\n'


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("option", ["-o", "--html", "--paste"])
def test_full_disk_leaves_no_truncated_file(tmp_path: Path, option: str) -> None:
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mount)], check=True)
    try:
        target = mount / "report.out"
        target.write_text(OLD)
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the rest of the disk, 1 KiB at a time
            for _ in range(64):
                try:
                    os.write(fd, b"x" * 1024)
                except OSError:
                    break
        finally:
            os.close(fd)
        # Enough paths for a report larger than the page the old file frees (the paste is
        # compressed: it needs more).
        count = 100 if option == "--paste" else 6
        with ExitStack() as stack:
            servers = [stack.enter_context(StunServer()) for _ in range(count)]
            outcome = run_lkice(
                ["run", *(s.uri for s in servers), "--quality-duration", "0", option,
                 str(target)],
                timeout=60,
            )  # fmt: skip
        after = target.read_text("utf-8", errors="replace") if target.exists() else None
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    check = Checks(outcome, f"full_disk[{option}]")
    kept = after == OLD
    whole = False
    if after and not kept:
        if option == "-o":
            try:
                whole = json.loads(after).get("schema") == "lkice.report/1"
            except ValueError:
                whole = False
        elif option == "--html":
            whole = after.rstrip().endswith("</html>")
        else:
            whole = "END" in after.splitlines()[-1] if after.strip() else False
    check.that(
        kept or whole,
        f"the file is {'gone' if after is None else f'{len(after)} bytes'}: neither the old "
        f"one nor a whole new one ({(after or '')[-80:]!a})",
    )
    if kept:
        check.that(outcome.status == 3, f"the write failed but exit status is {outcome.status}")
        check.that(str(target) in outcome.stderr, "stderr does not name the file that failed")
    check.that(bool(outcome.stdout.strip()), "the report is not on stdout")
    check.clean()
    check.done()
