"""The PV name grammar: ``<prefix>:<name>_<dtype><count>``. Pure: no I/O, no pcaspy.

The suffix fixes a PV's type and size for its whole life, so a name alone says what a PV
is before any value arrives; that is what lets a client monitor a name before anyone has
written to it.

* ``dtype`` is ``f`` (float64, DBR_DOUBLE), ``i`` (int32, DBR_LONG) or ``c`` (char array,
  DBR_CHAR, holding text). Upper case ``F``/``I``/``C`` is a right-appending buffer.
* ``count`` is a decimal >= 1 without a leading zero; a buffer needs count >= 2.
* ``name`` is one or more of letters, digits, ``_``, ``-`` and ``:``. A ``.`` is never part
  of a name: it is reserved for record-style field syntax (``NAME.EGU``).

Three outcomes, kept apart on purpose:

* the name is not of the grammar (or not under our prefix): `Grammar.parse` returns None.
  On CA such a name is simply not answered, so another server on the network may own it.
* the name is of the grammar but beyond a limit (too long, too many elements):
  `Refused` is raised, the caller counts and logs it, and nothing is allocated.
* a name sent as data without the prefix (a ZMQ update, a delete) that has the shape of
  another relay's full name is refused as WRONG_PREFIX (`Grammar.foreign`): it would
  otherwise become a PV nested under ours.
* otherwise a `PVSpec` describes the PV.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Any

from relayd.core.errors import Reason, Refused


class Kind(enum.Enum):
    """The element type of a PV, named by its lower-case suffix letter."""

    FLOAT = "f"
    INT = "i"
    CHAR = "c"

    # Members are singletons, so hashing by identity finds the same dict entries as
    # Enum's own hash (of the name), without its Python frame: ~15 ns against ~110 ns a
    # lookup, and every event's gdd type is looked up by kind (`relayd.ca.gdd.AIT`).
    __hash__ = object.__hash__

    @property
    def itemsize(self) -> int:
        """Bytes per element (float64, int32, char), in memory and on the wire."""
        return int(_ELEMENT[self][1:])

    @property
    def dtype(self) -> Any:
        """The numpy dtype of the elements in memory (native byte order).

        numpy is imported only here, when asked: the push client parses names with this
        module on hosts that may have no numpy.
        """
        return _numpy_dtype(_ELEMENT[self])

    @property
    def stored_dtype(self) -> Any:
        """The numpy dtype of the elements as bytes at rest and in transit: little-endian,
        as the autosave store keeps them and the internal pipe carries them."""
        return _numpy_dtype("<" + _ELEMENT[self])


# The one table of element types: the numpy type code of each kind's elements.
_ELEMENT = {Kind.FLOAT: "f8", Kind.INT: "i4", Kind.CHAR: "u1"}
_KIND_OF_LETTER = {letter: Kind(letter.lower()) for letter in "ficFIC"}


@functools.lru_cache(maxsize=None)
def _numpy_dtype(code: str) -> Any:
    import numpy

    return numpy.dtype(code)
@dataclass(frozen=True, slots=True)
class PVSpec:
    """What a name says about its PV: full name, element type, count, and buffer or not."""

    name: str
    kind: Kind
    count: int
    buffer: bool

    @property
    def is_scalar(self) -> bool:
        """A single numeric value (served as a CA scalar, not a one-element array)."""
        return self.count == 1 and self.kind is not Kind.CHAR

    @property
    def nbytes(self) -> int:
        """Largest value in bytes, as CA would carry it."""
        return self.count * self.kind.itemsize


@dataclass(frozen=True, slots=True)
class NameLimits:
    """Limits that refuse a name before anything is allocated for it."""

    max_name_length: int = 128
    max_elements: int = 1_000_000


_SUFFIX = re.compile(r"(?P<base>[A-Za-z0-9_:\-]+)_(?P<dtype>[ficFIC])(?P<count>[1-9][0-9]*)")
_PREFIX = re.compile(r"[A-Za-z0-9_:\-]+")
# Digits beyond this can only be over any limit; stop before int() does big-number work.
_MAX_COUNT_DIGITS = 12


def validate_prefix(prefix: str) -> str:
    """Return the prefix if usable, else raise ValueError saying why."""
    if not _PREFIX.fullmatch(prefix or ""):
        raise ValueError(
            f"invalid prefix {prefix!r}: use letters, digits, '_', '-' and ':' only"
        )
    if prefix.endswith(":"):
        raise ValueError(f"invalid prefix {prefix!r}: leave out the trailing ':'")
    return prefix


class Grammar:
    """Parses full PV names under one prefix, within the configured limits."""

    def __init__(self, prefix: str, limits: NameLimits = NameLimits()):
        self.prefix = validate_prefix(prefix)
        self.limits = limits
        self._head = prefix + ":"
        self._parts = prefix.count(":") + 1  # ':'-separated parts of the prefix

    def qualify(self, name: str) -> str:
        """The full name for `name`, given with or without the prefix."""
        return name if name.startswith(self._head) else self._head + name

    def foreign(self, name: str) -> str | None:
        """The prefix `name` seems to carry, if it looks like another relay's full name.

        A name sent without our prefix is read as relative to it, so a full name meant
        for another relay (``other:prefix:x_f1`` sent to ``5trap:relay``) would silently
        become a nested PV. A name without our prefix that has at least as many
        ':'-separated parts before its last one as our prefix has parts has the shape of
        a full name under a prefix like ours: it is not taken as relative (the sender
        spells it out with our prefix if a PV of ours is meant). Fewer parts
        (``motor:x_f1`` to ``5trap:relay``) are relative as before. See docs/PVS.md.
        """
        if name.startswith(self._head) or name.count(":") < self._parts:
            return None
        return ":".join(name.split(":", self._parts)[: self._parts])

    def parse(self, full_name: str) -> PVSpec | None:
        """The spec of `full_name`; None if it is not ours; `Refused` if beyond a limit."""
        if not full_name.startswith(self._head):
            return None
        match = _SUFFIX.fullmatch(full_name, len(self._head))
        if match is None:
            return None
        dtype, count_text = match.group("dtype"), match.group("count")
        buffer = dtype.isupper()
        if len(count_text) > _MAX_COUNT_DIGITS:
            count = None
        else:
            count = int(count_text)
            if buffer and count < 2:
                return None  # a buffer of one element is not a name of the grammar
        if len(full_name) > self.limits.max_name_length:
            raise Refused(
                Reason.NAME_TOO_LONG,
                f"{full_name[:80]}...: {len(full_name)} characters, "
                f"limit {self.limits.max_name_length}",
            )
        if count is None or count > self.limits.max_elements:
            raise Refused(
                Reason.COUNT_LIMIT,
                f"{full_name}: {count_text} elements, limit {self.limits.max_elements}",
            )
        return PVSpec(full_name, _KIND_OF_LETTER[dtype], count, buffer)

    def spec_for(self, name: str) -> PVSpec:
        """Like `parse` after `qualify`, but a name that is not ours is refused too.

        Used where a name arrives as data (a ZMQ update, a put to the delete PV) rather
        than as a CA search: there is no one else to answer it, so say why it is wrong.
        """
        full = self.qualify(name)
        spec = self.parse(full)
        if spec is None:
            raise Refused(
                Reason.BAD_NAME,
                f"{name!r} is not <prefix>:<name>_<dtype><count> under prefix "
                f"{self.prefix!r} (dtype f/i/c, F/I/C for buffers of count >= 2)",
            )
        other = self.foreign(name)
        if other is not None:
            raise Refused(
                Reason.WRONG_PREFIX,
                f"{name!r} looks like a PV of a relay with prefix {other!r}, not "
                f"{self.prefix!r}; to mean this relay's PV, send {full!r}",
            )
        return spec
