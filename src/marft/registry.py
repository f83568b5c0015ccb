"""One small generic registry, used only at the real swap points.

Algorithms, advantage estimators, environments and rollout backends are looked up by name so
that adding one is a new function plus a registration, not an edit of the trainer. A component
whose module is heavy or optional (the vLLM backend) is registered by its import path and imported
only when chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components.

    Example:
        >>> ESTIMATORS = Registry("advantage estimator")
        >>> @ESTIMATORS.register("gae")
        ... def gae(x):
        ...     return x
        >>> ESTIMATORS.get("gae")(1)
        1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._paths: dict[str, str] = {}

    def _claim(self, name: str) -> None:
        if name in self._items or name in self._paths:
            raise ValueError(f"{self.kind} {name!r} is already registered")

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a second registration is an error."""

        def deco(obj: T) -> T:
            self._claim(name)
            self._items[name] = obj
            return obj

        return deco

    def register_path(self, name: str, path: str) -> None:
        """Register the component at ``path`` (``package.module:attr``) under ``name`` without
        importing it: its module is imported by the first :meth:`get` of ``name``."""
        self._claim(name)
        self._paths[name] = path

    def get(self, name: str) -> T:
        """Return the component called ``name``; the error lists every registered choice."""
        if name in self._paths:  # imported once; a failed import stays registered, to be tried again
            self._items[name] = self._import(self._paths[name])
            del self._paths[name]
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(self.names())
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def _import(self, path: str) -> Any:
        module, _, attr = path.partition(":")
        return getattr(importlib.import_module(module), attr)

    def names(self) -> list[str]:
        """Every registered name, imported or not, sorted."""
        return sorted([*self._items, *self._paths])

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
