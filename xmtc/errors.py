"""What the user gave us was wrong: one sentence, exit 2 (also importable from xmtc.config)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us (config, data, paths): shown as one sentence, exit 2. Met by several
    ranks of a run, it is said once (`xmtc.distributed.say_error`)."""


class ConfigError(UserError):
    """A bad config file, key, value or override."""


class DataError(UserError):
    """A missing or malformed data file: the message names the file and line."""
