"""Tables of names, all of one shape: name -> (factory, one-line summary).

Each kind of named thing has one table in the module that defines it (:data:`sdeflow.samplers.SAMPLERS`,
:data:`sdeflow.schedules.SCHEDULES`, :data:`sdeflow.grids.GRIDS`, :data:`sdeflow.inverse.METHODS`, ...);
the command line and ``sdeflow list`` read them, and inside the library objects are passed, not
names. A table is a read-only mapping from name to factory (``table[name](...)``), so it reads like the
dictionaries it replaces, plus what every table needs: :meth:`NameTable.lookup` with an error that lists
what is allowed, and :meth:`NameTable.summary` for listings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, NamedTuple


class Entry(NamedTuple):
    """One name's factory, its one-line summary, and anything else its table keeps (``info``)."""

    factory: Callable
    summary: str
    info: Any = None


class NameTable(Mapping):
    """A read-only table ``name -> factory`` of one ``kind`` of thing, with one-line summaries.

    ``entries`` maps each name to ``(factory, summary)`` or ``(factory, summary, info)``; the order is kept."""

    def __init__(self, kind: str, entries: dict):
        self.kind = kind
        self._entries = {name: Entry(*value) for name, value in entries.items()}
        for name, entry in self._entries.items():
            if not callable(entry.factory) or not isinstance(entry.summary, str) or not entry.summary:
                raise TypeError(f"{kind} {name!r}: an entry is (factory, one-line summary[, info])")

    def __getitem__(self, name: str) -> Callable:
        return self._entries[name].factory

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, name: str) -> Callable:
        """The factory of ``name``, or a ``ValueError`` that lists every allowed name."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._entries)}")
        return self._entries[name].factory

    def instance(self, value, cls: type):
        """``value`` itself if it is a ``cls`` already, else the entry named ``value`` built with its
        defaults (an unknown name: the ``ValueError`` of :meth:`lookup`)."""
        return value if isinstance(value, cls) else self.lookup(value)()

    def make(self, name: str, *args, **kwargs):
        """``lookup(name)(*args, **kwargs)``."""
        return self.lookup(name)(*args, **kwargs)

    def entry(self, name: str) -> Entry:
        self.lookup(name)
        return self._entries[name]

    def summary(self, name: str) -> str:
        return self.entry(name).summary

    def info(self, name: str) -> Any:
        return self.entry(name).info

    def merged(self, other: "NameTable", kind: str | None = None) -> "NameTable":
        """A table of both tables' entries (``other``'s win on equal names)."""
        return NameTable(kind or self.kind, {**self._entries, **other._entries})

    def __repr__(self) -> str:
        return f"NameTable({self.kind!r}, {list(self._entries)})"


def lookup(table, kind: str, name: str):
    """``table[name]`` with an error listing the allowed names (for a :class:`NameTable` or a plain mapping)."""
    if isinstance(table, NameTable):
        return table.lookup(name)
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(table)}")
    return table[name]
