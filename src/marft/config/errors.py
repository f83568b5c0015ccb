"""The config's error type: it names the dotted key and what is allowed."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range.

    Attributes:
        key: dotted path of the offending key (``""`` for the whole file).
        message: what is wrong and what is allowed.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)
