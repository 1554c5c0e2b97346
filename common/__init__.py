"""Helpers every layer shares and that belong to none of them (kept tiny on purpose)."""
