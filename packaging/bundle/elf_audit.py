"""What the ELF objects of a bundle need from the system, read with binutils' readelf.

Used by the build (which refuses a bundle that is not self-contained) and by the tests.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

LOADER = "ld-linux-x86-64.so.2"


@dataclass(frozen=True)
class Elf:
    path: Path
    interpreter: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    glibc_needed: tuple[int, int] | None
    """The newest GLIBC_x.y symbol version it needs, or None."""


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                          check=True).stdout


def version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def read(path: Path) -> Elf:
    dynamic = _readelf("-d", "-l", str(path))
    interp = re.search(r"Requesting program interpreter: ([^\]]+)\]", dynamic)
    rpath = re.search(r"\(RPATH\)\s+Library rpath: \[([^\]]*)\]", dynamic)
    runpath = re.search(r"\(RUNPATH\)\s+Library runpath: \[([^\]]*)\]", dynamic)
    # -V's version needs section (.gnu.version_r): one "Name: GLIBC_2.14" per version
    # of glibc any of its symbols binds to.
    needs = _readelf("-V", str(path)).split(".gnu.version_r", 1)
    glibc = [version(v) for v in re.findall(r"Name: GLIBC_(\d+\.\d+(?:\.\d+)?)",
                                            needs[1] if len(needs) > 1 else "")]
    return Elf(
        path=path,
        interpreter=interp.group(1) if interp else None,
        needed=tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)),
        rpath=tuple(rpath.group(1).split(":")) if rpath else (),
        runpath=tuple(runpath.group(1).split(":")) if runpath else (),
        glibc_needed=max(glibc) if glibc else None,
    )


def glibc_provided(libc: Path) -> tuple[int, int]:
    """The newest GLIBC_x.y version a libc.so.6 defines (.gnu.version_d)."""
    defs = _readelf("-V", str(libc)).split(".gnu.version_d", 1)[1].split(".gnu.version_r")[0]
    return max(version(v) for v in re.findall(r"Name: GLIBC_(\d+\.\d+(?:\.\d+)?)", defs))


def elves(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def audit(opt: Path, *, prefix: str) -> list[str]:
    """Every way the tree at `opt` (installed as `prefix`) would load something of the
    host's: an interpreter outside the bundle, a library the bundle lacks, a GLIBC
    version newer than the bundle's libc defines. Empty when self-contained."""
    lib = opt / "lib"
    provided = glibc_provided(lib / "libc.so.6")
    problems = []
    for path in elves(opt):
        elf = read(path)
        name = path.relative_to(opt)
        # Shared libraries (libc.so.6 among them) may name an interpreter too: only what
        # bin/ starts matters.
        if (name.parts[0] == "bin" and elf.interpreter != f"{prefix}/lib/{LOADER}"):
            problems.append(f"{name}: started by {elf.interpreter}, not the bundle's loader")
        if elf.glibc_needed is not None and elf.glibc_needed > provided:
            problems.append(f"{name} needs GLIBC_{'.'.join(map(str, elf.glibc_needed))}, "
                            f"the bundle's libc has {'.'.join(map(str, provided))}")
        own = [Path(str(d).replace("$ORIGIN", str(path.parent)))
               for d in (*elf.rpath, *elf.runpath)]
        # What bin/ starts finds its libraries through its own DT_RPATH alone; the objects it
        # loads through that too (a DT_RPATH is inherited), or through their own RUNPATH.
        places = own if name.parts[0] == "bin" else [lib, *own]
        for soname in elf.needed:
            if not any((d / soname).exists() for d in places):
                problems.append(f"{name} needs {soname}, which the bundle does not carry")
    return problems
