"""What the user gave us was wrong: one sentence, exit 2 (also importable from xmtc.config)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us (config, data, paths): shown as one sentence, exit 2.

    `echo` False: every rank raises it and rank 0 prints it; the others exit with 2 silently."""

    def __init__(self, *args, echo: bool = True):
        super().__init__(*args)
        self.echo = echo


class ConfigError(UserError):
    """A bad config file, key, value or override."""


class DataError(UserError):
    """A missing or malformed data file: the message names the file and line."""
