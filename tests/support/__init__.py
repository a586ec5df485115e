"""Servers and helpers only the tests use (lkice itself never imports them)."""
