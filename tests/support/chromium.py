"""Debian's Chromium as the tests drive it (through playwright, told to use this binary; its own
browser download is never used)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CHROMIUM", "CHROMIUM_ARGS"]

CHROMIUM = Path("/usr/bin/chromium")
# Root needs --no-sandbox; nothing may talk to Google's services (this machine's network is
# closed: every such request would be refused, or cost time).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
