"""A tiny name -> factory registry (as in timm's ``@register_model``).

Every pluggable part (datasets, models, aggregators) registers itself with a
decorator on its definition; callers build by name and get an error that lists
the valid names when the name is unknown.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from unlearnflow.errors import choices_error

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> F:
        if name not in self._entries:
            raise choices_error(self.kind, name, self._entries)
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
