"""Build the one-file lkice binary for this platform (Linux, macOS, Windows).

    python3 packaging/binary/build.py [--dist DIR] [--target URL] [--token TOKEN [--token2 TOKEN]]

1. lkice.spec: lkice as one folder (PyInstaller), with --target/--token embedded as the
   double-click default (lkice/embedded.json, only inside the build: the source tree is left as
   it was).
2. That folder as a zip; its SHA-256 (with the version) is the build key.
3. launcher.spec: a small one-file launcher that knows the key.
4. The zip appended to the launcher: DIST/lkice (lkice.exe on Windows). At its first start the
   launcher unpacks the folder into the user's cache, later starts run it from there
   (launcher.py). Needs: pip install '.[build]'.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = ROOT / "packaging" / "binary"
EMBEDDED = ROOT / "lkice" / "embedded.json"


def pyinstaller(spec: Path, dist: Path, work: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--distpath", str(dist), "--workpath", str(work), str(spec)],
        check=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def zip_folder(folder: Path, archive: Path) -> None:
    """Deterministic order; file modes kept; symbolic links stored as links."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as out:
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder.parent).as_posix()
            if path.is_symlink():
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                out.writestr(info, os.readlink(path))
            elif path.is_file():
                out.write(path, name)


COOKIE_MAGIC = b"MEI\014\013\012\013\016"  # PyInstaller's archive cookie (CArchive)
COOKIE_FORMAT = "!8sIIII64s"
COOKIE_LENGTH = struct.calcsize(COOKIE_FORMAT)


def append_payload(launcher: Path, payload: Path, binary: Path) -> None:
    """launcher + payload zip = binary. On Linux the launcher's own archive is an ELF section,
    found through the section table: the zip is simply appended. Where the archive is at the
    end of the file instead (Windows, macOS), PyInstaller's bootloader finds it by scanning back
    from the end for its cookie, which 100+ MB appended would slow down on every start: there
    the zip's comment (the last bytes of the file) is a copy of the cookie, its archive length
    grown by what follows the archive, so the bootloader finds it at once and computes the same
    archive start, and the zip stays a valid zip."""
    exe = launcher.read_bytes()
    at = exe.rfind(COOKIE_MAGIC)
    if at < 0:
        raise SystemExit(f"{launcher}: no PyInstaller archive cookie")
    if at + COOKIE_LENGTH != len(exe):
        binary.write_bytes(exe + payload.read_bytes())
        return
    magic, length, toc_offset, toc_length, pyvers, pylib = struct.unpack(COOKIE_FORMAT, exe[at:])
    # The payload as written has an empty comment; the comment is the new cookie.
    body = payload.read_bytes()
    if not body.endswith(b"\x00\x00"):  # the EOCD's comment length: 0
        raise SystemExit(f"{payload}: expected a zip without a comment")
    cookie = struct.pack(
        COOKIE_FORMAT,
        magic,
        length + len(body) + COOKIE_LENGTH,
        toc_offset,
        toc_length,
        pyvers,
        pylib,
    )
    body = body[:-2] + struct.pack("<H", COOKIE_LENGTH) + cookie
    binary.write_bytes(exe + body)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", default="dist", type=Path)
    parser.add_argument("--target", help="LiveKit URL run by default (double-click)")
    parser.add_argument("--token", help="LiveKit token embedded with --target")
    parser.add_argument(
        "--token2",
        help="a second participant's token (same room, another identity), embedded with "
        "--token: the SFU paths' data round trip",
    )
    args = parser.parse_args()
    if args.token and not args.target:
        parser.error("--token needs --target")
    if args.token2 and not args.token:
        parser.error("--token2 needs --token")
    dist: Path = args.dist.resolve()
    start = time.monotonic()
    sys.path.insert(0, str(ROOT))
    from lkice import __version__

    with tempfile.TemporaryDirectory(prefix="lkice-build-") as tmp:
        work = Path(tmp)
        if args.target:
            embedded = {"target": args.target, "token": args.token}
            if args.token2:
                embedded["token2"] = args.token2
            EMBEDDED.write_text(json.dumps(embedded))
        try:
            pyinstaller(HERE / "lkice.spec", work / "app", work / "build-app")
        finally:
            EMBEDDED.unlink(missing_ok=True)
        program = "lkice.exe" if sys.platform == "win32" else "lkice"
        payload = work / "payload.zip"
        zip_folder(work / "app" / "lkice", payload)
        key = f"{__version__}-{sha256(payload)[:16]}"
        (work / "_lkice_payload.py").write_text(f"KEY = {key!r}\nPROGRAM = {program!r}\n")
        pyinstaller(
            HERE / "launcher.spec",
            work / "launcher",
            work / "build-launcher",
            {"LKICE_PAYLOAD_MODULE_DIR": str(work)},
        )
        dist.mkdir(parents=True, exist_ok=True)
        binary = dist / program
        append_payload(work / "launcher" / program, payload, binary)
        binary.chmod(0o755)
    size = binary.stat().st_size / 1e6
    print(f"built {binary} in {time.monotonic() - start:.0f} s, {size:.0f} MB, key {key}")


if __name__ == "__main__":
    main()
