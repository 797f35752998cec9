"""Build the bench's C clients against the libca that the epicscorelibs wheel ships.

Why C: a Python CA client tops out at a few ten thousand events per second, far below
what pcas can send, so it would measure itself instead of the server. The clients are
built at bench time (not committed, not packaged) from bench/c/ into bench/build/, which
git ignores; a client is rebuilt only when a source is newer than its binary.

    python bench/build.py          # build (or check) every client, print their paths
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SOURCES = BENCH / "c"
BUILD = BENCH / "build"
CLIENTS = ("monitor", "put", "connect", "get")
COMMON = ("common.c", "common.h")


class BuildError(RuntimeError):
    """The C clients cannot be built (no compiler, no epicscorelibs, a compile error)."""


def epics_paths() -> tuple[list[Path], Path]:
    """Include directories and the library directory of the epicscorelibs wheel."""
    try:
        import epicscorelibs.path as epics_path
    except ImportError as error:
        raise BuildError(f"epicscorelibs is not installed ({error}); pip install epicscorelibs") from None
    include = Path(epics_path.include_path)
    # Some builds of the wheel keep OS and compiler headers in subdirectories, others
    # flatten them into include/; take whichever exist.
    includes = [include] + [p for p in (include / "os" / "Linux", include / "compiler" / "gcc")
                            if p.is_dir()]
    return includes, Path(epics_path.lib_path)


def _stale(binary: Path, sources: list[Path]) -> bool:
    return not binary.exists() or any(s.stat().st_mtime > binary.stat().st_mtime for s in sources)


def build(verbose: bool = False) -> dict[str, Path]:
    """Build every client that is missing or older than its sources; {name: binary}."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise BuildError("no C compiler (gcc or cc) on PATH")
    includes, libdir = epics_paths()
    BUILD.mkdir(exist_ok=True)
    binaries = {}
    for name in CLIENTS:
        sources = [SOURCES / f"{name}.c"] + [SOURCES / c for c in COMMON]
        binary = BUILD / name
        if _stale(binary, sources):
            command = [
                compiler, "-O2", "-Wall", "-Wextra", "-o", str(binary),
                str(SOURCES / f"{name}.c"), str(SOURCES / "common.c"),
                *(f"-I{p}" for p in includes), f"-L{libdir}", f"-Wl,-rpath,{libdir}",
                "-lca", "-lCom", "-lm", "-lpthread",
            ]
            if verbose:
                print(" ".join(command), file=sys.stderr)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise BuildError(f"building {name} failed:\n{done.stderr}")
            if done.stderr.strip() and verbose:
                print(done.stderr, file=sys.stderr)
        binaries[name] = binary
    return binaries


if __name__ == "__main__":
    try:
        for client, path in build(verbose=True).items():
            print(f"{client}: {path}")
    except BuildError as error:
        sys.exit(f"bench/build.py: {error}")
