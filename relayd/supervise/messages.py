"""What travels on the internal channels between the workers and the CA process. Pure.

Each worker has two pipes (`relayd.supervise.pipe`): up (worker -> CA process) and down
(CA process -> worker). A message is one msgpack array, ``[tag, field, ...]``: the tag
says which class below it is, the fields follow in the class's field order.

Up:
  `Forward`   batches of updates (`relayd.core.ops.Batch`) and the worker's counters
  `Query`     a question for the CA process (``kind`` and ``args``), answered by a
              `QueryResult` with the same ``request_id``
Down:
  `Verdicts`  one verdict per op of a batch that asked for them (`Batch.reply`)
  `QueryResult`
  `Feed`      the HTTP worker's change feed (`relayd.core.feed`, `relayd.ca.feed`)

A new kind of message is a NamedTuple with a new tag in `KINDS`; a tag nobody knows is
refused by `decode` (ValueError), so old and new processes fail loudly, not silently.
numpy arrays travel as msgpack extension types and arrive as read-only views of their own
bytes. Checks stop at the message's shape: each batch, and each op in it, is checked where
it is applied (checking a batch here would cost as much again as decoding it).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import msgpack
import numpy as np

from relayd.core.names import Kind
from relayd.core.ops import Batch

# msgpack extension codes for numpy arrays inside pipe messages.
_EXT_DTYPES = {1: Kind.FLOAT.stored_dtype, 2: Kind.INT.stored_dtype, 3: Kind.CHAR.stored_dtype}
_EXT_CODES = {dtype: code for code, dtype in _EXT_DTYPES.items()}


class Forward(NamedTuple):
    """Up: updates in batches, and counters to add to the CA process's.

    Each batch is one message's accepted updates (`relayd.core.ops.Batch`), applied
    atomically by the CA process. `decode` gives each batch back as a list in Batch's
    field order, its ops as lists in PipeOp's (see `relayd.core.ops` for why).
    """

    seq: int
    sent_ns: int  # time.monotonic_ns() when the worker sent it (same host clock)
    batches: list[Batch]
    counters: dict[str, Any]


class Query(NamedTuple):
    """Up: ask the CA process something; the answer is a `QueryResult`."""

    request_id: int
    kind: str
    args: Any


class Verdicts(NamedTuple):
    """Down: what became of each op of the batch that carried `reply` = `request_id`.

    `verdicts` are `Verdict.to_wire` tuples, in the batch's order. `durable` is True
    when autosave had committed every change of the batch; `note` says why not when
    the batch asked for it (autosave is off, or its writes fail).
    """

    request_id: int
    verdicts: list
    durable: bool
    note: str


class QueryResult(NamedTuple):
    """Down: the answer to `Query` `request_id`: a payload, or an error text."""

    request_id: int
    payload: Any
    error: str


class Feed(NamedTuple):
    """Down: one message of the change feed; `chunk` is a `relayd.core.feed.FeedChunk`.

    `seq` counts the feed's messages, so that the worker notices one that went missing.
    """

    seq: int
    chunk: Any


Message = Union[Forward, Query, Verdicts, QueryResult, Feed]

# The tag of each kind of message. Tags travel, so never reuse one.
KINDS: dict[int, type] = {1: Forward, 2: Query, 3: Verdicts, 4: QueryResult, 5: Feed}
_TAGS = {kind: tag for tag, kind in KINDS.items()}


def _default(value: object) -> object:
    if isinstance(value, np.ndarray):
        code = _EXT_CODES.get(value.dtype)
        if code is not None:
            return msgpack.ExtType(code, np.ascontiguousarray(value).tobytes())
    raise TypeError(f"cannot send {type(value).__name__} through the pipe")


def _ext_hook(code: int, data: bytes) -> object:
    dtype = _EXT_DTYPES.get(code)
    if dtype is None:
        return msgpack.ExtType(code, data)
    # A read-only view of `data`, a bytes object of its own that nothing else holds:
    # no copy is needed, and nobody can change the array behind the PV's back.
    return np.frombuffer(data, dtype=dtype)


def encode(message: Message) -> bytes:
    """`message` as one pipe payload."""
    return msgpack.packb((_TAGS[type(message)], *message), default=_default,
                         use_bin_type=True)


def decode(payload: bytes) -> Message:
    """The message in `payload`; ValueError (or msgpack's errors) if it is not one."""
    obj = msgpack.unpackb(payload, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                          use_list=True)
    if type(obj) is not list or not obj:
        raise ValueError("not a pipe message: [tag, field, ...]")
    kind = KINDS.get(obj[0]) if type(obj[0]) is int else None
    if kind is None:
        raise ValueError(f"unknown pipe message tag {obj[0]!r}")
    if len(obj) != len(kind._fields) + 1:
        raise ValueError(f"a {kind.__name__} of {len(obj) - 1} fields, not "
                         f"{len(kind._fields)}")
    message = kind(*obj[1:])
    if kind is Forward and not (type(message.batches) is list
                                and type(message.counters) is dict
                                and type(message.sent_ns) is int):
        raise ValueError("not a Forward: (seq, sent_ns, [batch, ...], {counters})")
    return message
