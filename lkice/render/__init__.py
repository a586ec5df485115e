"""Renderers: they only consume the report dictionary, never probe."""
