"""Why an update was refused: one small exception family and the reason codes.

Every refusal in relayd, whatever path it came in on (a CA put, a ZMQ message, a put to
the delete PV), is a `Refused` carrying one `Reason`. The reason's code is what the
status counters, the log and the CA error path report, so an operator sees the same word
for the same problem everywhere. Pure: no I/O.
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """A refusal reason: the value is the short code used in counters and logs."""

    BAD_NAME = "badName"                    # not a name of the grammar
    NAME_TOO_LONG = "nameTooLong"           # longer than the name limit
    COUNT_LIMIT = "countLimit"              # element count above the per-PV limit
    PV_LIMIT = "pvLimit"                    # the relay already holds its most PVs
    PLACEHOLDER_LIMIT = "placeholderLimit"  # too many names monitored before creation
    BAD_VALUE = "badValue"                  # value of the wrong type, or not convertible
    TOO_MANY_ELEMENTS = "tooManyElements"   # more elements than the PV's count
    NO_SUCH_PV = "noSuchPV"                 # delete of a name that holds no PV
    READ_ONLY = "readOnly"                  # put to a status PV
    MALFORMED = "malformed"                 # a message that does not decode
    AUTH_DENIED = "authDenied"              # a ZMQ connection refused by CURVE/allow-list,
                                            # or a PVA put the access rules deny
    BYTES_LIMIT = "bytesLimit"              # the relay already holds its most bytes
    WRONG_PREFIX = "wrongPrefix"            # shaped like a PV of another relay
    INTERNAL = "internal"                   # a bug in relayd; logged with a traceback

    @property
    def code(self) -> str:
        return self.value

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


# What each reason means, as "refusals because ...": the status PVs' docs and the table of
# them in docs/OPERATIONS.md (tests/unit/test_docs.py keeps the two in step).
_DESCRIPTIONS = {
    Reason.BAD_NAME: "the name is not <prefix>:<name>_<dtype><count>",
    Reason.NAME_TOO_LONG: "the name is longer than --max-name-length",
    Reason.COUNT_LIMIT: "the name asks for more elements than --max-elements",
    Reason.PV_LIMIT: "the relay already holds --max-pvs PVs",
    Reason.PLACEHOLDER_LIMIT: "--max-placeholders names are already watched before creation",
    Reason.BAD_VALUE: "the value, or an attribute, has the wrong type or cannot be converted",
    Reason.TOO_MANY_ELEMENTS: "the value has more elements than the PV's count",
    Reason.NO_SUCH_PV: "the name holds no PV (a delete, a put to a deleted PV, attributes alone, "
                       "or a search for one of its fields)",
    Reason.READ_ONLY: "the target is read-only (a put to a status PV or to a read-only field)",
    Reason.MALFORMED: "a message does not decode",
    Reason.AUTH_DENIED: "a ZMQ connection was refused (an unknown CURVE key, or an address not "
                        "in --zmq-allow), or the access security rules deny a pvAccess put",
    Reason.BYTES_LIMIT: "the PVs would hold more than --max-total-bytes",
    Reason.WRONG_PREFIX: "a name sent without the prefix has the shape of a full name under "
                         "another prefix (send it with this relay's prefix)",
    Reason.INTERNAL: "relayd hit an internal error (logged with a traceback)",
}


def shown(value: object, limit: int = 60) -> str:
    """`value` as a refusal text shows it: its repr, cut to `limit` characters.

    Never raises (the repr of an int of more than 4,300 digits does, a Python limit) and
    never floods a log line with a megabyte of someone's data.
    """
    try:
        text = repr(value)
    except ValueError:
        text = (f"an integer of {value.bit_length()} bits" if isinstance(value, int)
                else f"a {type(value).__name__} too large to show")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BootError(Exception):
    """A process of relayd cannot start (bad config, address in use); the message is the
    one-line reason the supervisor reports before it stops."""


class Refused(Exception):
    """An update that relayd will not apply. Nothing was changed when this is raised."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.code}: {detail}")
        self.reason = reason
        self.detail = detail
