"""What the push client raises: one family, `RelayError`, each kind saying what went wrong.

* `RelayUnreachable`: a message could not be queued, or (acknowledged) no answer came
  within the timeout. With acknowledgements an unanswered request is *unknown*: it may
  have been applied or not (docs/PROTOCOL.md, "No answer").
* `UpdateRefused`: the relay refused an update: `pv` as sent, `reason` (the status PVs'
  reason code, such as ``badValue``), `text`.
* `BatchRefused`: some updates of a batch (or of the requests a `flush` waited for) were
  refused; `results` has every update's fate, `refused` the refusals. The others were
  applied.
* `NotDurable`: every update was applied, but not committed to the autosave file, which
  the client asked for (`note` says why: autosave off, or its writes failing).
* `ProtocolError`: the relay could not read the request (a version mismatch, or a bug).
"""

from __future__ import annotations

from relayd.core.acks import Result


class RelayError(Exception):
    """Something went wrong talking to the relay."""


class RelayUnreachable(RelayError):
    """No relay took the message (or answered it) within the timeout."""


class UpdateRefused(RelayError):
    """The relay refused one update: nothing was changed by it."""

    def __init__(self, pv: str, reason: str, text: str):
        super().__init__(f"{pv}: {reason}: {text}")
        self.pv = pv
        self.reason = reason
        self.text = text

    @classmethod
    def of(cls, result: Result) -> UpdateRefused:
        return cls(result.pv, result.reason or "", result.text)


class BatchRefused(RelayError):
    """Some updates were refused (`refused`), the others applied; `results` has them all."""

    def __init__(self, results: list[Result]):
        self.results = results
        self.refused = [UpdateRefused.of(result) for result in results if not result.ok]
        first = self.refused[0] if self.refused else None
        more = f" (and {len(self.refused) - 1} more)" if len(self.refused) > 1 else ""
        super().__init__(f"{len(self.refused)} of {len(results)} updates refused: "
                         f"{first}{more}")


class NotDurable(RelayError):
    """Applied, but not committed to the autosave file as asked: `note` says why."""

    def __init__(self, results: list[Result], note: str):
        super().__init__(f"applied but not durable: {note}")
        self.results = results
        self.note = note


class ProtocolError(RelayError):
    """The relay could not read the request: `reason` and `text` say why."""

    def __init__(self, reason: str, text: str):
        super().__init__(f"the relay refused the request: {reason}: {text}")
        self.reason = reason
        self.text = text
