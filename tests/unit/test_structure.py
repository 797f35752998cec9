"""The architecture as a test: what each package may import, and how big things may grow.

The folders say what relayd is made of (see docs/DESIGN.md): a pure core, the CA shell,
the supervisor and its plumbing, the store, the client, and the worker processes. These
rules keep it that way, checked on the source (AST), not by importing it:

* `relayd/core` imports only the standard library, numpy, msgpack and itself, and none
  of the standard library's I/O and concurrency modules: it holds rules, not I/O.
* Only `relayd/ca` imports pcaspy, only `relayd/pva` imports p4p; nothing in `relayd`
  imports `workers`.
* No circle of imports among relayd's and the workers' modules (function-level imports
  count: they are circles that merely happen later).
* No module over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES.
* No ``assert`` statements in production code: ``python -O`` removes them.

Each rule is also run on a small tree made to break it, so that a rule that can no
longer fail is noticed.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("relayd", "workers")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

CORE_THIRD_PARTY = {"numpy", "msgpack"}
# Standard library modules that do I/O or concurrency: the core has no use for them.
CORE_FORBIDDEN_STDLIB = {
    "socket", "threading", "subprocess", "sqlite3", "select", "selectors", "signal",
    "multiprocessing", "asyncio", "fcntl", "ctypes", "concurrent", "http", "urllib",
    "shutil", "tempfile",
}


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. relayd.core.names
    path: Path
    tree: ast.Module
    lines: int

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def load_modules(root: Path) -> dict[str, Module]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            text = path.read_text()
            modules[".".join(parts)] = Module(".".join(parts), path, ast.parse(text),
                                              len(text.splitlines()))
    return modules


def imported_names(module: Module) -> list[tuple[str, int]]:
    """Every module name `module` imports (absolute), with the line of the import."""
    found = []
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, node.lineno))
            # `from relayd.core import names` imports the module relayd.core.names
            found.extend((f"{base}.{alias.name}", node.lineno) for alias in node.names)
    return found


def internal_edges(modules: dict[str, Module]) -> dict[str, set[str]]:
    """module -> the relayd/workers modules it imports (only names that are modules)."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        for name, _ in imported_names(module):
            if name in modules and name != module.name:
                edges[module.name].add(name)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


# --- the rules, each a function of a tree so that it can be shown to fail ----------------


def core_violations(modules: dict[str, Module]) -> list[str]:
    problems = []
    for module in modules.values():
        if not module.name.startswith("relayd.core"):
            continue
        for name, line in imported_names(module):
            top = name.split(".")[0]
            if not top or top == "__future__":
                continue
            allowed = (
                name.startswith("relayd.core") or name == "relayd"
                or top in CORE_THIRD_PARTY
                or (top in sys.stdlib_module_names and top not in CORE_FORBIDDEN_STDLIB)
            )
            if not allowed:
                problems.append(f"{module.name}:{line} imports {name}")
    return problems


def shell_violations(modules: dict[str, Module], library: str, shell: str) -> list[str]:
    """Imports of `library` from outside the shell package `shell`, its only user."""
    return [
        f"{module.name}:{line} imports {name}"
        for module in modules.values()
        if module.name != shell and not module.name.startswith(shell + ".")
        for name, line in imported_names(module) if name.split(".")[0] == library
    ]


def pcaspy_violations(modules: dict[str, Module]) -> list[str]:
    return shell_violations(modules, "pcaspy", "relayd.ca")


def p4p_violations(modules: dict[str, Module]) -> list[str]:
    return shell_violations(modules, "p4p", "relayd.pva")


def workers_violations(modules: dict[str, Module]) -> list[str]:
    return [
        f"{module.name}:{line} imports {name}"
        for module in modules.values() if module.name.startswith("relayd")
        for name, line in imported_names(module) if name.split(".")[0] == "workers"
    ]


def size_violations(modules: dict[str, Module]) -> list[str]:
    problems = []
    for module in modules.values():
        if module.lines > MAX_MODULE_LINES:
            problems.append(f"{module.name}: {module.lines} lines")
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{module.name}:{node.lineno} {node.name}(): "
                                    f"{length} lines")
    return problems


def assert_violations(modules: dict[str, Module]) -> list[str]:
    return [f"{module.name}:{node.lineno}" for module in modules.values()
            for node in ast.walk(module.tree) if isinstance(node, ast.Assert)]


# --- the real tree ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load_modules(REPO)


def test_the_tree_is_found(modules) -> None:
    for name in ("relayd.core.names", "relayd.ca.process", "relayd.supervise.supervisor",
                 "relayd.store.sqlite", "relayd.client.push", "workers.ingest.loop"):
        assert name in modules


def test_the_core_does_no_io_and_uses_no_pcaspy_or_zmq(modules) -> None:
    assert core_violations(modules) == []


def test_only_the_ca_shell_imports_pcaspy(modules) -> None:
    assert pcaspy_violations(modules) == []


def test_only_the_pva_shell_imports_p4p(modules) -> None:
    assert p4p_violations(modules) == []


def test_relayd_never_imports_the_workers(modules) -> None:
    assert workers_violations(modules) == []


def test_no_circle_of_imports(modules) -> None:
    assert find_cycle(internal_edges(modules)) is None


def test_modules_and_functions_stay_small(modules) -> None:
    assert size_violations(modules) == []


def test_no_assert_in_production_code(modules) -> None:
    assert assert_violations(modules) == []


# --- each rule fails on a tree made to break it --------------------------------------------


def make_tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    return load_modules(tmp_path)


@pytest.mark.parametrize("line", [
    "import pcaspy", "from pcaspy import cas", "import zmq", "import sqlite3",
    "import socket", "import threading", "from subprocess import run",
    "from relayd.ca import gdd", "from relayd.store.sqlite import Store",
    "from .. import config",
])
def test_a_forbidden_import_in_the_core_is_caught(tmp_path, line) -> None:
    tree = make_tree(tmp_path, {"relayd/__init__.py": "", "relayd/core/__init__.py": "",
                                "relayd/core/rules.py": f"import math\n{line}\n"})
    problems = core_violations(tree)
    assert problems, f"{line!r} in the core went unnoticed"
    assert all(problem.startswith("relayd.core.rules:2 imports ") for problem in problems)


def test_allowed_core_imports_pass(tmp_path) -> None:
    tree = make_tree(tmp_path, {"relayd/core/rules.py": (
        "from __future__ import annotations\nimport math, re, enum\nimport numpy as np\n"
        "import msgpack\nfrom relayd.core import names\nfrom .names import Kind\n")})
    assert core_violations(tree) == []


def test_pcaspy_outside_the_ca_shell_is_caught(tmp_path) -> None:
    tree = make_tree(tmp_path, {"relayd/ca/ok.py": "from pcaspy import cas\n",
                                "relayd/store/bad.py": "def f():\n    import pcaspy\n"})
    assert pcaspy_violations(tree) == ["relayd.store.bad:2 imports pcaspy"]


def test_p4p_outside_the_pva_shell_is_caught(tmp_path) -> None:
    tree = make_tree(tmp_path, {"relayd/pva/ok.py": "from p4p import Value\n",
                                "relayd/ca/bad.py": "import p4p.server\n",
                                "relayd/pvax.py": "from p4p.nt import NTScalar\n"})
    assert p4p_violations(tree) == ["relayd.ca.bad:1 imports p4p.server",
                                    "relayd.pvax:1 imports p4p.nt",
                                    "relayd.pvax:1 imports p4p.nt.NTScalar"]


def test_relayd_importing_a_worker_is_caught(tmp_path) -> None:
    tree = make_tree(tmp_path, {"relayd/supervise/child.py": "from workers.ingest import x\n",
                                "workers/ingest/__init__.py": "import relayd\n"})
    assert workers_violations(tree) == ["relayd.supervise.child:1 imports workers.ingest",
                                        "relayd.supervise.child:1 imports workers.ingest.x"]


def test_a_circle_of_imports_is_caught(tmp_path) -> None:
    tree = make_tree(tmp_path, {
        "relayd/cli.py": "from relayd.supervise import supervisor\n",
        "relayd/supervise/__init__.py": "",
        "relayd/supervise/supervisor.py": "from relayd.supervise.child import x\n",
        "relayd/supervise/child.py": "def main():\n    from relayd.cli import StopFlag\n",
    })
    cycle = find_cycle(internal_edges(tree))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"relayd.cli", "relayd.supervise.supervisor", "relayd.supervise.child"}


def test_long_modules_and_functions_are_caught(tmp_path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = make_tree(tmp_path, {
        "relayd/long.py": "def long():\n" + body + "\n" + "\n" * MAX_MODULE_LINES,
    })
    assert size_violations(tree) == [
        f"relayd.long: {MAX_FUNCTION_LINES + 1 + MAX_MODULE_LINES} lines",
        f"relayd.long:1 long(): {MAX_FUNCTION_LINES + 1} lines",
    ]


def test_an_assert_in_production_code_is_caught(tmp_path) -> None:
    tree = make_tree(tmp_path, {"relayd/core/meta.py": "X = 1\nassert X == 1, 'table'\n"})
    assert assert_violations(tree) == ["relayd.core.meta:2"]
