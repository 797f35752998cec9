"""Coverage-guided fuzzing of the decoder target with atheris (libFuzzer), by hand.

    python -m tests.fuzz.atheris_decoder [libFuzzer options] [CORPUS_DIR ...]
    python -m tests.fuzz.atheris_decoder -max_total_time=600 /tmp/relayd-corpus

Runs `tests.fuzz.targets.check`, the same target as the hypothesis tests, on inputs
libFuzzer mutates: the first byte picks the mode, raw bytes as one ZMQ message, or an
update map built from the bytes (structure-aware, so that deep paths are reached). A
crash writes the input to ``crash-<sha1>``; replay it with
``python -m tests.fuzz.atheris_decoder crash-<sha1>``.

atheris is not a relayd dependency: ``pip install atheris``. Without it this prints why
and exits with status 0.
"""

from __future__ import annotations

import logging
import sys

NAMES = ["fz:a_f1", "b_i1", "c_c10", "d_F5", "e_I3", "f_C8", "g_f1000", "h_f1001",
         "i_q1", "j.k_f1", "", "fz:" + "n" * 70 + "_f1"]
DTYPES = ["<f8", ">f8", "<f4", "|i1", "<i2", ">i4", "<i8", "|u1", "<u8", "<f2", "|b1", "O"]
KEYS = ["pv", "value", "op", "ts", "meta", "v", "egu", "prec", "hihi", "hhsv", "tmo"]


def build_update(fdp) -> bytes:
    """An update-shaped msgpack message drawn from the fuzzer's bytes."""
    import msgpack

    def scalar():
        pick = fdp.ConsumeIntInRange(0, 8)
        if pick == 0:
            return None
        if pick == 1:
            return fdp.ConsumeBool()
        if pick == 2:
            return fdp.ConsumeIntInRange(-(2**63), 2**64 - 1)
        if pick == 3:
            return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
        if pick == 4:
            return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
        if pick == 5:
            return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        if pick == 6:
            return [scalar() for _ in range(fdp.ConsumeIntInRange(0, 6))]
        if pick == 7:
            return {"dtype": fdp.PickValueInList(DTYPES),
                    "data": fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))}
        return {fdp.PickValueInList(KEYS): scalar() for _ in range(fdp.ConsumeIntInRange(0, 3))}

    updates = []
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        update = {"pv": fdp.PickValueInList(NAMES) if fdp.ConsumeBool() else scalar()}
        for key in KEYS[1:6]:
            if fdp.ConsumeBool():
                update[key] = scalar()
        updates.append(update)
    message = updates if len(updates) > 1 or fdp.ConsumeBool() else updates[0]
    return msgpack.packb(message, use_bin_type=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        import atheris
    except ImportError:
        print("atheris is not installed, so nothing was fuzzed: `pip install atheris` (it "
              "is not a relayd dependency), or run the hypothesis long mode instead: "
              "python -m pytest tests/fuzz --hypothesis-profile=long", file=sys.stderr)
        return 0
    logging.disable(logging.CRITICAL)  # the relay logs every refusal; not wanted here
    with atheris.instrument_imports():
        import msgpack  # noqa: F401
        import relayd.core.meta  # noqa: F401
        import relayd.core.names  # noqa: F401
        import relayd.core.protocol  # noqa: F401
        import relayd.core.values  # noqa: F401
        import workers.ingest.validate  # noqa: F401
        from tests.fuzz import targets

    def one_input(data: bytes) -> None:
        if data[:1] == b"\x01":
            data = build_update(atheris.FuzzedDataProvider(data[1:]))
        targets.check(data)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
