"""A hash chain over a log's events: a rewrite, insertion, deletion or reordering breaks it.

An event is a frozen dataclass with a class attribute ``kind`` and the fields ``seq`` (its place:
1, 2, ...), ``prev`` (the hash of the event before it; :data:`GENESIS` for the first) and ``hash``:
SHA-256 over a canonical serialisation of its kind and every other field, ``seq`` and ``prev``
included. So each event commits to the whole history before it, a linked list of hashes as in
Haber & Stornetta (1991), "How to time-stamp a digital document".

The serialisation is exact and typed: JSON with sorted keys, every value tagged with its type and
floats written with :meth:`float.hex`, so a value read back from the store hashes as it did when
written, and a REAL rewritten as TEXT (or 0.21 for 2.91) does not. Field names are hashed too:
renaming one is a change of the stored format.

The chain has no key: whoever can rewrite every event can recompute every hash, and dropping
the last events leaves a valid, shorter chain. A head recorded elsewhere (an *anchor*) catches
both; Crosby & Wallach (2009), "Efficient data structures for tamper-evident logging", on why a
tamper-evident log needs auditors who keep such commitments.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Note:
...     kind = "note"  # a class attribute, not a field
...     text: str
...     seq: int = 0
...     prev: str = ""
...     hash: str = ""
>>> a = link(Note("a"), seq=1, prev=GENESIS)
>>> b = link(Note("b"), seq=2, prev=a.hash)
>>> first_break([a, b]) is None
True
>>> first_break([a, dataclasses.replace(b, text="c")])
(1, 'its content does not match its hash (rewritten)')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

GENESIS = "0" * 64  # the `prev` of the first event


def _plain(value: Any) -> Any:
    """A JSON value that tells types apart and writes floats exactly."""
    if value is None:
        return None
    if isinstance(value, float):
        return ["float", value.hex()]
    if isinstance(value, int):
        return ["int", str(value)]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, (tuple, list)):
        return ["list", [_plain(v) for v in value]]
    return ["other", type(value).__name__, repr(value)]  # never written by us: a tampered cell


def canonical(event: Any) -> bytes:
    """The bytes hashed for ``event``: its kind and every field but ``hash``."""
    body = {
        f.name: _plain(getattr(event, f.name))
        for f in dataclasses.fields(event)
        if f.name != "hash"
    }
    return json.dumps(
        [event.kind, body], sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode()


def event_hash(event: Any) -> str:
    """SHA-256 (hex) of :func:`canonical`."""
    return hashlib.sha256(canonical(event)).hexdigest()


def link(event: Any, *, seq: int, prev: str) -> Any:
    """``event`` placed at ``seq`` after the event whose hash is ``prev``, with its own hash."""
    placed = dataclasses.replace(event, seq=seq, prev=prev, hash="")
    return dataclasses.replace(placed, hash=event_hash(placed))


def first_break(events: Sequence[Any]) -> tuple[int, str] | None:
    """The index of the first event of ``events`` (sorted by ``seq``) that does not extend the
    chain of those before it, and why; ``None`` if the chain is intact."""
    prev = GENESIS
    for i, event in enumerate(events):
        if event.seq < i + 1:
            return (
                i,
                f"its place in the chain (event {event.seq}) is taken: a row was inserted or rewritten",
            )
        if event.seq > i + 1:
            return i, f"event {i + 1} before it is missing: a row was deleted"
        if event.prev != prev:
            return (
                i,
                "it does not follow the event before it: rows were deleted, inserted or reordered",
            )
        if event_hash(event) != event.hash:
            return i, "its content does not match its hash (rewritten)"
        prev = event.hash
    return None
