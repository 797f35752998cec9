"""``relayd ls [GLOB]``, ``relayd show NAME``, ``relayd status``: a running relay, read
through its HTTP API.

They need no EPICS tools: they ask the relay's HTTP worker (`workers.http`) and print
aligned tables (rich). The relay is found at ``--url``, else at the first ``http_bind``
of the ``--config`` file, else at the default ``http://127.0.0.1:8080``. Exit codes:
0 done; 1 the relay answered no (no such PV, a read refused); 2 a usage error;
3 no relay answers at the URL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Sequence

from relayd import config as configuration

NOT_FOUND, USAGE, UNREACHABLE = 1, 2, 3
SEVERITY_STYLE = {"NO_ALARM": "green", "MINOR": "black on yellow", "MAJOR": "white on red",
                  "INVALID": "white on magenta"}
PAGE = 1000  # PVs asked for per request by `ls`


class Failed(Exception):
    """The command cannot do its work: the message and the exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def parse(command: str, argv: Sequence[str]) -> argparse.Namespace:
    helps = {"ls": "List the relay's PVs (all, or those whose names match GLOB).",
             "show": "Show one PV in full: value, alarm, attributes, last writer.",
             "status": "Show the relay's processes, counters, autosave and endpoints."}
    parser = argparse.ArgumentParser(prog=f"relayd {command}", description=helps[command])
    if command == "ls":
        parser.add_argument("glob", nargs="?", default=None, metavar="GLOB",
                            help="names to list, e.g. 'temp*' (the prefix may be left out)")
        parser.add_argument("--limit", type=int, default=1000,
                            help="most PVs to list (default: 1000)")
    if command == "show":
        parser.add_argument("name", metavar="NAME", help="the PV, with or without the prefix")
    parser.add_argument("--url", help="the relay's HTTP address (default: from --config, "
                                      "else http://127.0.0.1:8080)")
    parser.add_argument("--config", metavar="FILE", help="the relay's TOML file, for its address")
    parser.add_argument("--token-file", metavar="FILE",
                        help="bearer token, for a relay beyond loopback that asks for one")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default: 5)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead")
    return parser.parse_args(argv)


def base_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    values = configuration.load_file(args.config) if args.config else {}
    return configuration.Config(**values).http_url


def get(args: argparse.Namespace, path: str, query: dict | None = None) -> Any:
    """The JSON answer to GET `path`; `Failed` with the reason if there is none."""
    url = base_url(args) + path + ("?" + urllib.parse.urlencode(query) if query else "")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            request.add_header("Authorization", "Bearer " + handle.read().strip())
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        try:
            text = json.load(error).get("text") or error.reason
        except ValueError:
            text = error.reason
        raise Failed(f"the relay at {base_url(args)} answered {error.code}: {text}",
                     NOT_FOUND) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        why = getattr(error, "reason", error)
        raise Failed(f"no relay answers at {base_url(args)} ({why}); is it running, with "
                     "its HTTP worker on (--http-bind), and is --url right?",
                     UNREACHABLE) from None


def value_text(value: Any, elements: int, truncated: bool) -> str:
    if value is None:
        return "(no value)"
    if isinstance(value, list):
        shown = ", ".join(str(item) for item in value[:8])
        more = ", ..." if truncated or len(value) > 8 else ""
        return f"[{shown}{more}] ({elements})"
    return str(value)


def age(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def ls(args: argparse.Namespace, console: Any) -> None:
    from rich.table import Table

    pvs: list[dict] = []
    after, total = None, 0
    while len(pvs) < args.limit:
        query = {"limit": min(PAGE, args.limit - len(pvs))}
        query.update({key: value for key, value in (("match", args.glob), ("after", after))
                      if value})
        page = get(args, "/api/v1/pvs", query)
        pvs.extend(page["pvs"])
        total, after = page["total"], page["next"]
        if not after:
            break
    if args.json:
        console.print_json(json.dumps({"pvs": pvs, "total": total}))
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "value", "units", "severity", "age", "writer"):
        table.add_column(column, overflow="fold")
    for pv in pvs:
        table.add_row(pv["name"], value_text(pv["value"], pv["elements"], pv["truncated"]),
                      pv["attributes"].get("egu", ""),
                      f"[{SEVERITY_STYLE.get(pv['severity'], '')}]{pv['severity']}[/]",
                      age(pv["ts"]), pv["writer"])
    console.print(table)
    if total > len(pvs):
        console.print(f"[dim]{len(pvs)} of {total} PVs shown; use --limit or a GLOB[/]")


def show(args: argparse.Namespace, console: Any) -> None:
    from rich.table import Table

    pv = get(args, "/api/v1/pvs/" + urllib.parse.quote(args.name, safe=":"))
    if args.json:
        console.print_json(json.dumps(pv))
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="dim")
    table.add_column(overflow="fold")
    kind = f"{pv['dtype']}{' buffer' if pv['buffer'] else ''} x {pv['count']}"
    style = SEVERITY_STYLE.get(pv["severity"], "")
    for key, value in (
        ("name", pv["name"]), ("type", kind), ("value", value_text(pv["value"], pv["elements"],
                                                                   False)),
        ("alarm", f"[{style}]{pv['severity']}[/] {pv['status']}"),
        ("time stamp", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pv["ts"]))
         + f" ({age(pv['ts'])} ago)" if pv["ts"] else "-"),
        ("last writer", pv["writer"]), ("updates", pv["updates"]),
        ("updates per minute", pv["updates_per_minute"]),
    ):
        table.add_row(key, str(value))
    for key, value in pv["attributes"].items():
        table.add_row(key.upper(), "(unset)" if value is None else str(value))
    console.print(table)


def status(args: argparse.Namespace, console: Any) -> None:
    from rich.table import Table

    answer = get(args, "/api/v1/status")
    if args.json:
        console.print_json(json.dumps(answer))
        return
    console.print(f"relay [bold]{answer['prefix']}[/] at {base_url(args)}, up "
                  f"{age(time.time() - answer['uptime'])}"
                  + ("" if answer["synced"] else " [yellow](HTTP worker still syncing)[/]"))
    processes = Table("process", "pid", "memory", "restarts", box=None, header_style="bold")
    for process in answer["processes"]:
        memory = process["rss_bytes"]
        processes.add_row(process["role"], str(process["pid"]),
                          "-" if memory is None else f"{memory / 2**20:.1f} MiB",
                          str(process["restarts"] if process["restarts"] is not None else "-"))
    console.print(processes)
    for title, values in (("counters", answer["counters"]), ("autosave", answer["autosave"]),
                          ("endpoints", answer["endpoints"])):
        table = Table(title, "", box=None, header_style="bold")
        for key, value in values.items():
            if not (title == "counters" and key.startswith("refused:") and not value):
                table.add_row(key, str(value))
        console.print(table)


COMMANDS = {"ls": ls, "show": show, "status": status}


def main(command: str, argv: Sequence[str]) -> int:
    """Run `command` (a key of COMMANDS) with `argv`; the exit code."""
    from rich.console import Console

    args = parse(command, argv)
    try:
        COMMANDS[command](args, Console())
    except Failed as failed:
        print(f"relayd {command}: {failed}", file=sys.stderr)
        return failed.code
    except (OSError, ValueError) as error:
        print(f"relayd {command}: {error}", file=sys.stderr)
        return USAGE
    return 0
