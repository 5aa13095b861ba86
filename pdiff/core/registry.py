"""One Registry for everything pdiff names (architectures, datasets, tasks, sources): a dict that refuses to rename
a taken name to something else and says what it knows when asked for a name it does not."""
from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    def __init__(self, kind: str, hint: str = "", items: dict[str, T] | None = None):
        super().__init__(items or {})
        self.kind, self.hint = kind, hint   # "architecture"; how a user adds one (said on an unknown name)

    def register(self, name: str, item: T) -> T:
        """Add `item` as `name`; a name already taken by another item is refused (names are contracts)."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self and self[name] != item:
            raise ValueError(f"{self.kind} {name!r} is already registered with something else; choose another name")
        self[name] = item
        return item

    def get_or_fail(self, name: str) -> T:
        """The item registered as `name`; an unknown name is a ValueError listing the known ones."""
        if name not in self:
            hint = f" ({self.hint})" if self.hint else ""
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}{hint}")
        return self[name]
