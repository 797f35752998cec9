"""``relayd autosave export|import``: the autosave store to and from JSON.

For backups and migrations. Export is safe while relayd runs (SQLite lets a reader in
beside the writer). Import writes the store directly, so it refuses a store that a
running relay holds (see `lock`): the relay does not read its store again and would go
on saving its own PVs over the imported ones.

Both judge every row or record with `rows.restore`, the gate a relay passes its rows
through at start: import refuses a file with any record the relay would leave out (and
then changes nothing), export leaves out the rows the relay would leave out and names
them. Neither knows the relay's limits (name length, element count), which its start
checks too; with ``--prefix`` they check the prefix, with ``--autosave`` any prefix goes.
A failure is one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from typing import Sequence

from relayd.core.errors import BootError, Refused
from relayd.core.names import Grammar
from relayd.store.lock import InUse
from relayd.store.paths import default_path
from relayd.store.rows import ANY_RELAY, UNLIMITED, NameRules, SavedPV, from_json, restore, \
    to_json
from relayd.store.sqlite import Store

FORMAT = "relayd-autosave"
FORMAT_VERSION = 1
SHOWN = 10  # rows left out that an export names one by one


class Failed(Exception):
    """The command cannot do its work: the one-line reason, said after the command."""


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="relayd autosave",
        description="Export the autosave store to JSON, or import JSON into it.",
    )
    parser.add_argument("action", choices=("export", "import"))
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--autosave", metavar="PATH",
                       help="the store file (its rows may be of any prefix)")
    where.add_argument("--prefix", default="relay",
                       help="the relay whose store (at the default path for this prefix) "
                            "it is; only its PVs are exported or imported (default: relay)")
    parser.add_argument("file", nargs="?", default="-",
                        help="JSON file to write (export) or read (import); - for "
                             "stdout/stdin (the default)")
    parser.add_argument("--replace", action="store_true",
                        help="import: make the store hold exactly the file's PVs "
                             "(default: add them, replacing PVs of the same name)")
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    path = args.autosave or default_path(args.prefix)
    try:
        grammar: NameRules = ANY_RELAY if args.autosave else Grammar(args.prefix, UNLIMITED)
        if args.action == "export":
            return export(args, path, grammar)
        return import_(args, path, grammar)
    except BootError as error:  # the store is unusable: the message names it
        print(f"relayd autosave: {error}", file=sys.stderr)
    except sqlite3.Error as error:
        print(f"relayd autosave {args.action}: {path}: {error}", file=sys.stderr)
    except (Failed, OSError, ValueError, RecursionError) as error:
        print(f"relayd autosave {args.action}: {error}", file=sys.stderr)
    return 1


def export(args: argparse.Namespace, path: str, grammar: NameRules) -> int:
    """Write every row that `rows.restore` takes; name the others (exit status 1)."""
    if not os.path.exists(path):
        raise BootError(f"no autosave file at {path}")
    store = Store.open(path)
    try:
        rows = store.load()
    finally:
        store.close()
    good, left_out = [], []
    for row in rows:
        try:
            restore(row, grammar)
        except Refused as refused:
            left_out.append(f"left out {row.label} ({refused})")
        else:
            good.append(to_json(row))
    out = sys.stdout if args.file == "-" else open(args.file, "w")
    with out if out is not sys.stdout else contextlib.nullcontext(out):
        json.dump({"format": FORMAT, "version": FORMAT_VERSION, "pvs": good}, out, indent=1)
        out.write("\n")
    for line in left_out[:SHOWN]:
        print(f"relayd autosave export: {line}", file=sys.stderr)
    if len(left_out) > SHOWN:
        print(f"relayd autosave export: and {len(left_out) - SHOWN} more", file=sys.stderr)
    print(f"exported {len(good)} PVs from {path}"
          + (f"; {len(left_out)} rows left out (see above)" if left_out else ""),
          file=sys.stderr)
    return 1 if left_out else 0


def import_(args: argparse.Namespace, path: str, grammar: NameRules) -> int:
    """Check every record, then write them all in one transaction, or nothing."""
    source = sys.stdin if args.file == "-" else open(args.file)
    with source if source is not sys.stdin else contextlib.nullcontext(source):
        saved = records(json.load(source), grammar)
    try:
        store = Store.open(path, lock=True)
    except InUse as in_use:
        raise Failed(f"autosave file {path} is in use by a running relay (pid {in_use.pid}); "
                     "stop it first") from None
    try:
        if args.replace:
            store.replace_all(saved)
        else:
            store.write(saved, ())
    finally:
        store.close()
    print(f"imported {len(saved)} PVs into {path}", file=sys.stderr)
    return 0


def records(data: object, grammar: NameRules) -> list[SavedPV]:
    """The rows an export file stands for, each checked as a relay checks it at start;
    `Failed` naming the first record that would not do."""
    if (not isinstance(data, dict) or data.get("format") != FORMAT
            or data.get("version") != FORMAT_VERSION):
        raise Failed(f"not a {FORMAT} version {FORMAT_VERSION} file")
    items = data.get("pvs")
    if not isinstance(items, list):
        raise Failed("its 'pvs' is not a list of records")
    saved: list[SavedPV] = []
    seen: dict[str, int] = {}
    for number, item in enumerate(items, 1):
        try:
            row = from_json(item)
            restore(row, grammar)
        except Refused as refused:
            raise Failed(f"record {number}: {refused}; nothing imported") from None
        if row.name in seen:
            raise Failed(f"record {number}: {row.name} is also record {seen[row.name]}; "
                         "nothing imported")
        seen[row.name] = number
        saved.append(row)
    return saved
