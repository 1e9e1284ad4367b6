"""A name -> object registry with a decorator, shared by models and schedules, so adding
one is one decorated function and an unknown name fails with the list of known ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from convergence.errors import ConvergenceError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj
        return deco

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str, extra_names: tuple[str, ...] = ()) -> T:
        """The registered object, or a ConvergenceError naming the value and the choices."""
        if name not in self._items:
            known = ", ".join([*self._items, *extra_names])
            raise ConvergenceError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[name]
