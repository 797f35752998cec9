"""``relayd autosave export|import``: the autosave store to and from JSON.

For backups and migrations. Export is safe while relayd runs (SQLite lets a reader in
beside the writer). Import writes the store directly: run it while relayd is stopped,
since a running relay does not read the store again and would go on saving its own PVs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Sequence

from relayd.store.paths import default_path
from relayd.store.sqlite import Store
from relayd.core.errors import BootError
from relayd.store.rows import from_json, to_json

FORMAT = "relayd-autosave"
FORMAT_VERSION = 1


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="relayd autosave",
        description="Export the autosave store to JSON, or import JSON into it.",
    )
    parser.add_argument("action", choices=("export", "import"))
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--autosave", metavar="PATH", help="the store file")
    where.add_argument("--prefix", default="relay",
                       help="find the store at the default path for this prefix "
                            "(default: relay)")
    parser.add_argument("file", nargs="?", default="-",
                        help="JSON file to write (export) or read (import); - for "
                             "stdout/stdin (the default)")
    parser.add_argument("--replace", action="store_true",
                        help="import: make the store hold exactly the file's PVs "
                             "(default: add them, replacing PVs of the same name)")
    return parser.parse_intermixed_args(argv)


def export(store: Store, out) -> int:
    saved = store.load()
    json.dump({"format": FORMAT, "version": FORMAT_VERSION,
               "pvs": [to_json(item) for item in saved]}, out, indent=1)
    out.write("\n")
    return len(saved)


def load(data: dict) -> list:
    if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a {FORMAT} version {FORMAT_VERSION} file")
    return [from_json(item) for item in data["pvs"]]


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    path = args.autosave or default_path(args.prefix)
    if args.action == "export" and not os.path.exists(path):
        print(f"relayd autosave: no autosave file at {path}", file=sys.stderr)
        return 1
    try:
        store = Store.open(path)
    except BootError as error:
        print(f"relayd autosave: {error}", file=sys.stderr)
        return 1
    try:
        if args.action == "export":
            out = sys.stdout if args.file == "-" else open(args.file, "w")
            with out if out is not sys.stdout else contextlib.nullcontext(out):
                count = export(store, out)
            print(f"exported {count} PVs from {path}", file=sys.stderr)
            return 0
        source = sys.stdin if args.file == "-" else open(args.file)
        with source if source is not sys.stdin else contextlib.nullcontext(source):
            saved = load(json.load(source))
        if args.replace:
            store.replace_all(saved)
        else:
            store.write(saved, ())
        print(f"imported {len(saved)} PVs into {path}", file=sys.stderr)
        return 0
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"relayd autosave {args.action}: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
