"""The docs held to the code: links resolve, the tables follow the code, every module is named.

README.md and docs/*.md are read as text, as they are written (nothing is rendered):

* every relative link, ``[text](path)``, ``[text](path#anchor)`` or ``[text](#anchor)``,
  outside code resolves: the file exists and the anchor is one of the target's headings
  (as GitHub makes anchors of them) or an explicit ``<a id=...>``;
* the status PV table of docs/OPERATIONS.md has exactly one row per
  `relayd.core.status.STATUS_PVS` entry, with its CA type, and a meaning that begins with
  the entry's own doc: the table is written from that list, and this keeps the two in step;
* the option table has exactly one row per `relayd.config.Config` field, with its default;
* docs/DESIGN.md names every module of ``relayd/`` and ``workers/``, and none that is gone;
* every module path (``relayd/core/names.py``) or dotted name (``relayd.core.values.convert``)
  that a page cites exists (a dotted name may also be a logger name the code uses);
* every test a page cites (``tests/e2e/test_acks.py::test_name``, as docs/PROMISES.md
  cites the test of each promise) exists, so a promise never points at a test that is gone;
* the README still holds the test command that ``.ci/run`` reads and runs.

Each check is a function from text to a list of problems, and each is also run on a
small text made to break it, so that a check that can no longer fail is noticed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from relayd.config import Config
from relayd.core.names import Kind
from relayd.core.status import STATUS_PVS

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PACKAGES = ("relayd", "workers")
# Options whose default is computed from others; their default cell says how.
DERIVED_DEFAULTS = {"autosave"}
# A dotted name ending so is a file name (`relayd.toml`, `relayd.log`), not a module.
FILE_SUFFIXES = {"toml", "conf", "log", "sqlite", "json", "md", "key", "acf", "lock"}

FENCE = re.compile(r"^ {0,3}```.*?^ {0,3}```[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # its text may run over lines
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
MODULE_PATH = re.compile(r"(?<![\w./~-])(?:relayd|workers)/(?:\w+/)*\w+\.py\b")
DOTTED = re.compile(r"(?<![\w./~-])(?:relayd|workers)(?:\.\w+)+")


def page_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def prose(text: str) -> str:
    """`text` without fenced code blocks and inline code (where links are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


# --- links and anchors ------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor GitHub makes of a heading: lower case, punctuation dropped, '-' for ' '."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: its headings' slugs (GitHub numbers repeats) and <a id>."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in HEADING.finditer(FENCE.sub("", text)):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(EXPLICIT_ANCHOR.findall(text))
    return found


def link_problems(path: Path, text: str, read=page_text) -> list[str]:
    """Relative links in `text` (the page at `path`) that lead nowhere."""
    problems = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{path.name}: link to {target}: no such file")
            continue
        if anchor and destination.suffix == ".md":
            offered = anchors(text if destination == path else read(destination))
            if anchor not in offered:
                problems.append(f"{path.name}: link to {target}: no such anchor")
    return problems


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = [p for page in PAGES for p in link_problems(page, page_text(page))]
    assert problems == []


def test_the_link_check_catches_broken_links(tmp_path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` section, with commas\n")
    page = tmp_path / "page.md"
    text = ("# Title\n\n## Twice\n\n## Twice\n\n"
            "[ok](other.md) [ok](other.md#a-code-section-with-commas) [ok](#twice-1)\n"
            "[ok](#title) [ok](https://example.org/x#y) `[not a link](nowhere.md)`\n"
            "[a link over\ntwo lines](#nope-either)\n"
            "```\n[not a link](nowhere.md)\n```\n"
            "[bad](missing.md) [bad](other.md#nope) [bad](#twice-2)\n")
    page.write_text(text)
    assert link_problems(page, text) == [
        "page.md: link to #nope-either: no such anchor",
        "page.md: link to missing.md: no such file",
        "page.md: link to other.md#nope: no such anchor",
        "page.md: link to #twice-2: no such anchor",
    ]


# --- tables written from the code ----------------------------------------------------------


def table_rows(text: str, first_cell: str) -> dict[str, list[str]]:
    """Rows of the markdown tables in `text` whose first cell matches `first_cell`,
    keyed by the first cell's group 1, as their other cells."""
    rows: dict[str, list[str]] = {}
    for line in FENCE.sub("", text).splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(first_cell, cells[0])
        if match:
            key = match.group(1)
            if key in rows:  # a row twice: reported as a row the code does not have
                key += " (again)"
            rows[key] = cells[1:]
    return rows


def ca_type(kind: Kind, count: int) -> str:
    """How the docs name a status PV's CA type."""
    return {Kind.INT: "long", Kind.FLOAT: "double"}.get(kind, f"char[{count}]")


def status_problems(text: str, status_pvs=STATUS_PVS) -> list[str]:
    """Where the status PV table disagrees with `status_pvs`."""
    rows = table_rows(text, r"`<prefix>:(status:[^`]+)`")
    problems = [f"{name}: in the table, not in the code" for name in rows
                if name not in {pv.suffix for pv in status_pvs}]
    for pv in status_pvs:
        row = rows.get(pv.suffix)
        if row is None:
            problems.append(f"{pv.suffix}: not in the table")
            continue
        if row[0] != ca_type(pv.kind, pv.count):
            problems.append(f"{pv.suffix}: type {row[0]!r}, the code says "
                            f"{ca_type(pv.kind, pv.count)!r}")
        if not row[1].replace("`", "").startswith(pv.doc):
            problems.append(f"{pv.suffix}: meaning {row[1]!r} does not begin with {pv.doc!r}")
    return problems


def test_every_status_pv_is_in_the_operations_table() -> None:
    assert status_problems(page_text(REPO / "docs" / "OPERATIONS.md")) == []


def test_the_status_check_catches_a_table_out_of_step() -> None:
    pvs = STATUS_PVS[:3]
    good = "".join(f"| `<prefix>:{pv.suffix}` | {ca_type(pv.kind, pv.count)} | {pv.doc}, "
                   "said more fully |\n" for pv in pvs)
    assert status_problems("| PV | type | meaning |\n|---|---|---|\n" + good, pvs) == []
    lines = good.splitlines(keepends=True)
    missing = "".join(lines[1:])
    assert status_problems(missing, pvs) == [f"{pvs[0].suffix}: not in the table"]
    extra = good + "| `<prefix>:status:gone` | long | a counter no longer kept |\n"
    assert status_problems(extra, pvs) == ["status:gone: in the table, not in the code"]
    wrong_type = good.replace("| long |", "| double |", 1)
    assert len(status_problems(wrong_type, pvs)) == 1
    wrong_doc = good.replace(pvs[1].doc, "something else", 1)
    assert len(status_problems(wrong_doc, pvs)) == 1


def default_problem(name: str, default: object, cell: str) -> str | None:
    """Why `cell` does not show `default`, or None if it does."""
    shown = cell.strip("`")
    if name in DERIVED_DEFAULTS:
        return None if cell else "empty default"
    if isinstance(default, bool):
        ok = cell == ("on" if default else "off")
    elif isinstance(default, (int, float)):
        ok = re.fullmatch(r"-?[\d.]+", shown) is not None and float(shown) == default
    elif isinstance(default, tuple):
        ok = shown == " ".join(default) if default else cell in ("any", "none")
    else:
        ok = shown == default if default else cell == "none"
    return None if ok else f"default {cell!r}, the code says {default!r}"


def option_problems(text: str, options=fields(Config)) -> list[str]:
    """Where the option table disagrees with `Config`'s fields."""
    rows = table_rows(text, r"`(--[a-z0-9-]+)`")
    flags = {"--" + field.name.replace("_", "-"): field for field in options}
    problems = [f"{flag}: in the table, not an option" for flag in rows if flag not in flags]
    for flag, field in flags.items():
        row = rows.get(flag)
        if row is None:
            problems.append(f"{flag}: not in the table")
            continue
        problem = default_problem(field.name, field.default, row[0])
        if problem:
            problems.append(f"{flag}: {problem}")
    return problems


def test_every_option_is_in_the_operations_table() -> None:
    assert option_problems(page_text(REPO / "docs" / "OPERATIONS.md")) == []


def test_the_option_check_catches_a_table_out_of_step() -> None:
    good = ("| `--prefix` | `relay` | x |\n| `--max-pvs` | 100000 | x |\n"
            "| `--stop-grace` | 10.0 | x |\n| `--zmq-bind` | `tcp://127.0.0.1:5555` | x |\n"
            "| `--insecure` | off | x |\n| `--zmq-allow` | any | x |\n"
            "| `--access-security` | none | x |\n")
    chosen = [f for f in fields(Config) if f.name in {
        "prefix", "max_pvs", "stop_grace", "zmq_bind", "insecure", "zmq_allow",
        "access_security"}]
    assert option_problems(good, chosen) == []
    assert option_problems(good.replace("100000", "10000"), chosen) == [
        "--max-pvs: default '10000', the code says 100000"]
    assert option_problems(good.replace("| off |", "| on |"), chosen) == [
        "--insecure: default 'on', the code says False"]
    assert option_problems(good + "| `--gone` | 1 | x |\n", chosen) == [
        "--gone: in the table, not an option"]
    assert option_problems(good.replace("`--prefix`", "prefix"), chosen) == [
        "--prefix: not in the table"]


# --- modules -----------------------------------------------------------------------------


def modules(root: Path = REPO) -> list[str]:
    """Every module of the packages, as DESIGN.md names it: a file's path, or a package's
    folder (``relayd/core/``) for its ``__init__.py``."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            found.append(relative[: -len("__init__.py")] if path.name == "__init__.py"
                         else relative)
    return found


def design_problems(text: str, existing: list[str]) -> list[str]:
    """Modules DESIGN.md does not name, and module paths it names that do not exist."""
    named = {span.strip("`") for span in INLINE_CODE.findall(text)}
    cited = {name for name in named if re.fullmatch(r"(?:relayd|workers)/(?:\w+/)*(?:\w+\.py)?",
                                                    name)}
    problems = [f"{module}: not named in DESIGN.md" for module in existing
                if module not in named]
    problems += [f"{name}: named in DESIGN.md, no such module" for name in sorted(cited)
                 if name not in existing]
    return problems


def test_design_names_every_module() -> None:
    assert modules(), "no modules found: is the tree where the test looks?"
    assert design_problems(page_text(REPO / "docs" / "DESIGN.md"), modules()) == []


def test_the_design_check_catches_a_missing_or_stale_module() -> None:
    existing = ["relayd/", "relayd/cli.py", "relayd/core/", "relayd/core/names.py"]
    text = "| `relayd/` | x |\n| `relayd/cli.py` | x |\n| `relayd/core/` | `relayd/core/names.py` |\n"
    assert design_problems(text, existing) == []
    assert design_problems(text, existing + ["relayd/core/new.py"]) == [
        "relayd/core/new.py: not named in DESIGN.md"]
    assert design_problems(text + "`relayd/relay.py`\n", existing) == [
        "relayd/relay.py: named in DESIGN.md, no such module"]


def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (read, not imported)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def module_file(root: Path, parts: list[str]) -> Path | None:
    """The file of the module named by `parts`, if there is one."""
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def logger_names(root: Path = REPO) -> set[str]:
    """The logger names the code uses (`logging.getLogger("relayd.ca")`)."""
    pattern = re.compile(r"getLogger\(\"([\w.]+)\"\)")
    return {name for package in PACKAGES for path in (root / package).rglob("*.py")
            for name in pattern.findall(path.read_text())}


def dotted_problem(root: Path, dotted: str, loggers: set[str]) -> str | None:
    """Why `dotted` (a module, or a module and a name in it) does not exist, or None."""
    parts = dotted.split(".")
    if parts[-1] in FILE_SUFFIXES or dotted in loggers:
        return None
    for split in range(len(parts), 0, -1):
        path = module_file(root, parts[:split])
        if path is None:
            continue
        rest = parts[split:]
        if not rest or rest[0] in top_level_names(path):
            return None
        return f"{dotted}: {'.'.join(parts[:split])} has no {rest[0]!r}"
    return f"{dotted}: no such module"


def citation_problems(name: str, text: str, root: Path = REPO,
                      loggers: set[str] | None = None) -> list[str]:
    """Module paths and dotted names cited in `text` (anywhere, code too) that are gone."""
    loggers = logger_names(root) if loggers is None else loggers
    problems = [f"{name}: {path}: no such module" for path in sorted(set(MODULE_PATH.findall(text)))
                if not (root / path).is_file()]
    for dotted in sorted(set(DOTTED.findall(text))):
        problem = dotted_problem(root, dotted, loggers)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def test_every_cited_module_and_name_exists() -> None:
    problems = [p for page in PAGES for p in citation_problems(page.name, page_text(page))]
    assert problems == []


def test_the_citation_check_catches_moved_modules() -> None:
    good = ("`relayd/core/protocol.py` `relayd.core.values.convert` `relayd.client.Client`\n"
            "```\nfrom relayd.client import Client\n```\n`relayd.toml` `relayd.ca` "
            "`/etc/relayd/x.py` `~/.relayd/daq1.key`\n")
    assert citation_problems("x.md", good, loggers=set()) == []
    assert citation_problems("x.md", "`relayd/protocol.py` and `relayd.values.convert`",
                             loggers=set()) == [
        "x.md: relayd/protocol.py: no such module",
        "x.md: relayd.values.convert: relayd has no 'values'",
    ]
    assert citation_problems("x.md", "`relayd.core.values.nothing`", loggers=set()) == [
        "x.md: relayd.core.values.nothing: relayd.core.values has no 'nothing'"]
    assert citation_problems("x.md", "`relayd.supervisor`", loggers={"relayd.supervisor"}) == []


# --- cited tests ---------------------------------------------------------------------------

TEST_CITATION = re.compile(r"(?<![\w./~-])(tests/(?:\w+/)*test_\w+\.py)::(\w+)")


def defined_tests(path: Path) -> set[str]:
    """The test functions a test module defines, at its top level or in its classes."""
    tree = ast.parse(path.read_text())
    nodes = list(tree.body) + [node for cls in tree.body if isinstance(cls, ast.ClassDef)
                               for node in cls.body]
    return {node.name for node in nodes
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test_")}


def cited_test_problems(name: str, text: str, root: Path = REPO) -> list[str]:
    """Tests cited in `text` as ``tests/FILE.py::test_name`` that do not exist."""
    problems = []
    for path, test in sorted(set(TEST_CITATION.findall(text))):
        if not (root / path).is_file():
            problems.append(f"{name}: {path}: no such test file")
        elif test not in defined_tests(root / path):
            problems.append(f"{name}: {path}::{test}: no such test")
    return problems


def test_every_cited_test_exists() -> None:
    problems = [p for page in PAGES for p in cited_test_problems(page.name, page_text(page))]
    assert problems == []


def test_the_cited_test_check_catches_a_test_that_is_gone(tmp_path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "def test_here():\n    pass\n\nclass TestB:\n    def test_in_class(self):\n"
        "        pass\n")
    good = "`tests/test_a.py::test_here` and tests/test_a.py::test_in_class\n"
    assert cited_test_problems("x.md", good, tmp_path) == []
    assert cited_test_problems("x.md", "`tests/test_a.py::test_gone`", tmp_path) == [
        "x.md: tests/test_a.py::test_gone: no such test"]
    assert cited_test_problems("x.md", "tests/test_b.py::test_here", tmp_path) == [
        "x.md: tests/test_b.py: no such test file"]


# --- the README's test command -------------------------------------------------------------


def ci_command(readme: str) -> str:
    """The command .ci/run takes from the README, read as its awk line reads it: the lines
    between the first ```sh after the ``<!-- test-command -->`` marker and the next ```."""
    found = grab = False
    command = []
    for line in readme.splitlines():
        if not found:
            found = "<!-- test-command -->" in line
        elif not grab:
            grab = line.startswith("```sh")
        elif line.startswith("```"):
            break
        else:
            command.append(line)
    return "\n".join(command).strip()


@pytest.mark.parametrize("readme, expected", [
    ("x\n<!-- test-command -->\n```sh\npython -m pytest\n```\n", "python -m pytest"),
    ("<!-- test-command -->\nwords\n```sh\npython -m pytest\n```\n```sh\nx\n```", "python -m pytest"),
    ("x\n```sh\npython -m pytest\n```\n", ""),
    ("x\n<!-- test-command -->\n```\npython -m pytest\n```\n", ""),
])
def test_the_command_check_reads_as_ci_does(readme: str, expected: str) -> None:
    assert ci_command(readme) == expected


def test_the_readme_holds_the_ci_test_command() -> None:
    command = ci_command(page_text(REPO / "README.md"))
    assert "pip install" in command and "pytest" in command
