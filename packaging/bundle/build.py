"""`make bundle`: a self-contained xenhad for dom0, and its RPM.

Everything comes from Debian's and PyPI's packages: CPython 3.11 with the glibc, dynamic
loader and libraries it was built for (Debian 12), the dependencies' wheels (manylinux2014,
pinned and checksummed in requirements.txt), and xenhad from this checkout. The result
uses nothing of dom0's userland: the interpreter's PT_INTERP names the bundle's own loader
and its DT_RPATH the bundle's lib/, so dom0's glibc 2.17 and python 3.6 are never loaded.

    dist/xenhad-VERSION-x86_64.tar.gz     unpacks (at /) to opt/xenhad/
    dist/xenhad-VERSION-1.x86_64.rpm      for CentOS 7's rpm 4.11 (xz payload)

Downloads are cached in build/bundle-cache (or $XENHAD_BUNDLE_CACHE): a warm build
reaches no network. Each step prints its duration.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import elf_audit

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
ROOT = HERE.parent.parent
PREFIX = "/opt/xenhad"
PYVER = "3.11"
LOADER = "ld-linux-x86-64.so.2"
PLATFORM = ["--platform", "manylinux2014_x86_64", "--python-version", PYVER,
            "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:"]

# Loaded at start by the interpreter (added to its DT_NEEDED) so that no later lookup of
# these names can reach dom0's copies: manylinux wheels carry a DT_RUNPATH, which hides the
# interpreter's DT_RPATH from their own dependencies, and glibc dlopens libgcc_s for
# pthread_exit's unwinding.
PRELOADED = ["libgcc_s.so.1", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libutil.so.1"]

# Standard library parts a daemon never uses, and extension modules whose libraries the
# bundle does not carry (curses, readline, dbm, nis) or that only test CPython itself.
STDLIB_SKIP = {"__pycache__", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "pydoc_data", "test", "tests", "EXTERNALLY-MANAGED", "config-3.11-x86_64-linux-gnu"}
DYNLOAD_SKIP = re.compile(
    r"^(_test|_ctypes_test|_xx|xxlimited|_curses|readline|_dbm|_gdbm|nis|ossaudiodev|_crypt"
    r"|_sqlite3)"
)


class BuildError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-rpm", action="store_true", help="the tarball only")
    args = parser.parse_args(argv)
    try:
        Builder().build(rpm=not args.no_rpm)
    except BuildError as e:
        print(f"bundle: {e}", file=sys.stderr)
        return 1
    return 0


def version() -> str:
    text = (ROOT / "src" / "xenhad" / "__init__.py").read_text()
    found = re.search(r'__version__ = "([^"]+)"', text)
    if not found:
        raise BuildError("no __version__ in src/xenhad/__init__.py")
    return found.group(1)


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc  # type: ignore[no-any-return]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def needed(path: Path) -> list[str]:
    out = run(["readelf", "-d", "-W", str(path)]).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def lock_entries(path: Path) -> Iterator[tuple[str, str, str]]:
    """(name, version, sha256) of each pinned line."""
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.match(r"([A-Za-z0-9_.-]+)==(\S+)\s+--hash=sha256:([0-9a-f]{64})$", line)
        if not found:
            raise BuildError(f"{path.name}: cannot read {line!r}")
        yield found.group(1), found.group(2), found.group(3)


class Builder:
    def __init__(self) -> None:
        self.version = version()
        self.work = ROOT / "build" / "bundle"
        self.cache = Path(os.environ.get("XENHAD_BUNDLE_CACHE", ROOT / "build" / "bundle-cache"))
        self.dist = ROOT / "dist"
        self.stage = self.work / "root"
        self.opt = self.stage / PREFIX.lstrip("/")
        self.pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        self.buildinfo: list[str] = []

    def build(self, *, rpm: bool) -> None:
        started = time.monotonic()
        debs = self.step("Debian packages", self.fetch_debs)
        wheels = self.step("wheels", self.fetch_wheels)
        self.step("interpreter and libraries", lambda: self.assemble_python(debs))
        self.step("xenhad and its dependencies", lambda: self.install_packages(wheels))
        self.step("launcher", self.launcher)
        self.step("byte-compile", self.compile)
        self.step("audit", self.audit)
        self.step("tarball", self.tarball)
        if rpm:
            self.step("rpm", self.rpm)
        print(f"bundle: done in {time.monotonic() - started:.1f}s: {self.tarball_path()}"
              + (f", {self.rpm_path()}" if rpm else ""))

    def step(self, what: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        result = action()
        print(f"bundle: {what}: {time.monotonic() - started:.1f}s", flush=True)
        return result

    def tarball_path(self) -> Path:
        return self.dist / f"xenhad-{self.version}-x86_64.tar.gz"

    def rpm_path(self) -> Path:
        return self.dist / f"xenhad-{self.version}-1.x86_64.rpm"

    # -- inputs --------------------------------------------------------------------------

    def fetch_debs(self) -> list[Path]:
        names = [n.strip() for n in (HERE / "debian-packages.txt").read_text().splitlines()
                 if n.strip() and not n.startswith("#")]
        where = self.cache / "debs"
        where.mkdir(parents=True, exist_ok=True)
        missing = [n for n in names if not list(where.glob(f"{n}_*.deb"))]
        if missing:
            proc = subprocess.run(["apt-get", "download", *missing], cwd=where,
                                  capture_output=True, text=True)
            if proc.returncode != 0:  # a machine that never ran apt-get update
                run(["apt-get", "update", "-qq"])
                run(["apt-get", "download", *missing], cwd=where)
        found: list[Path] = []
        for name in names:
            files = sorted(where.glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
            if not files:
                raise BuildError(f"apt-get download {name} gave no file")
            found.append(files[-1])
            self.buildinfo.append(f"deb {files[-1].name} sha256:{sha256(files[-1])}")
        return found

    def fetch_wheels(self) -> list[Path]:
        where = self.cache / "wheels"
        where.mkdir(parents=True, exist_ok=True)
        have = {sha256(p): p for p in where.iterdir() if p.is_file()}
        lock = HERE / "requirements.txt"
        wanted = list(lock_entries(lock))
        if any(h not in have for _, _, h in wanted):
            run([*self.pip, "download", "--no-deps", "--require-hashes", "-q", "-r", str(lock),
                 "-d", str(where), *PLATFORM])
            have = {sha256(p): p for p in where.iterdir() if p.is_file()}
        wheels = []
        for name, ver, digest in wanted:
            if digest not in have:
                raise BuildError(f"{name}=={ver}: no downloaded file has the pinned hash")
            wheels.append(have[digest])
            self.buildinfo.append(f"wheel {have[digest].name} sha256:{digest}")
        wheels.extend(self.sdist_wheels())
        return wheels

    def sdist_wheels(self) -> list[Path]:
        """Pure-Python wheels built here from pinned sources (PyPI has no wheel of them)."""
        where = self.cache / "sdist-wheels"
        where.mkdir(parents=True, exist_ok=True)
        lock = HERE / "requirements-sdist.txt"
        built = []
        for name, ver, digest in lock_entries(lock):
            stem = f"{name.replace('-', '_')}-{ver}-"
            files = [p for p in where.glob("*.whl") if p.name.lower().startswith(stem.lower())]
            if not files:
                pinned = where / f"{name}.txt"
                pinned.write_text(f"{name}=={ver} --hash=sha256:{digest}\n")
                run([*self.pip, "wheel", "--no-deps", "--require-hashes", "--no-binary=:all:",
                     "--no-build-isolation", "-q", "-r", str(pinned), "-w", str(where)])
                files = [p for p in where.glob("*.whl")
                         if p.name.lower().startswith(stem.lower())]
            if len(files) != 1 or not files[0].name.endswith("-none-any.whl"):
                raise BuildError(f"{name}=={ver} did not build to one pure-Python wheel: "
                                 f"{[p.name for p in files]}")
            built.append(files[0])
            self.buildinfo.append(f"sdist {name}=={ver} sha256:{digest} -> {files[0].name}")
        return built

    # -- the tree ------------------------------------------------------------------------

    def assemble_python(self, debs: list[Path]) -> None:
        debroot = self.work / "debroot"
        shutil.rmtree(debroot, ignore_errors=True)
        debroot.mkdir(parents=True)
        for deb in debs:
            run(["dpkg-deb", "-x", str(deb), str(debroot)])
        shutil.rmtree(self.stage, ignore_errors=True)
        (self.opt / "bin").mkdir(parents=True)
        lib = self.opt / "lib"
        lib.mkdir()

        python = self.opt / "bin" / f"python{PYVER}"
        shutil.copy2(debroot / "usr" / "bin" / f"python{PYVER}", python)
        (self.opt / "bin" / "python3").symlink_to(f"python{PYVER}")

        stdlib_src = debroot / "usr" / "lib" / f"python{PYVER}"
        stdlib = lib / f"python{PYVER}"

        def skip(folder: str, names: list[str]) -> set[str]:
            dropped = {n for n in names if n in STDLIB_SKIP}
            if folder.endswith("lib-dynload"):
                dropped |= {n for n in names if DYNLOAD_SKIP.match(n)}
            return dropped

        shutil.copytree(stdlib_src, stdlib, ignore=skip, symlinks=True)
        # Debian's site.py reads PREFIX/lib/python3/dist-packages (not site-packages).
        (lib / "python3" / "dist-packages").mkdir(parents=True)
        shutil.copy2(HERE / "sitecustomize.py", stdlib / "sitecustomize.py")

        # The interpreter starts through the bundle's loader and finds its libraries in
        # the bundle (DT_RPATH, not RUNPATH: it also covers what extension modules need).
        self.copy_lib(debroot, LOADER, lib)
        # One change per patchelf run: combined, patchelf 0.14 wrote a DT_RPATH pointing
        # into the new DT_NEEDED names.
        run(["patchelf", *[a for n in PRELOADED for a in ("--add-needed", n)], str(python)])
        run(["patchelf", "--set-interpreter", f"{PREFIX}/lib/{LOADER}", str(python)])
        run(["patchelf", "--force-rpath", "--set-rpath", "$ORIGIN/../lib", str(python)])
        self.debroot = debroot

    def copy_lib(self, debroot: Path, soname: str, lib: Path) -> None:
        for folder in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"):
            source = debroot / folder / soname
            if source.exists():
                shutil.copy2(source.resolve(), lib / soname)
                return
        raise BuildError(f"no Debian package of debian-packages.txt ships {soname}")

    def install_packages(self, wheels: list[Path]) -> None:
        site = self.opt / "lib" / "python3" / "dist-packages"
        run([*self.pip, "install", "--no-deps", "--no-index", "--no-compile", "-q",
             "--target", str(site), *PLATFORM, *map(str, wheels)])
        shutil.rmtree(site / "bin", ignore_errors=True)
        shutil.copytree(ROOT / "src" / "xenhad", site / "xenhad",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.resolve_libraries()

    def resolve_libraries(self) -> None:
        """Copy in every shared library some ELF of the bundle needs, and theirs."""
        lib = self.opt / "lib"
        bundled_elsewhere = {p.name for p in self.elves() if p.parent != lib}
        wanted = set(PRELOADED)
        while True:
            for elf in self.elves():
                wanted.update(needed(elf))
            missing = sorted(n for n in wanted
                             if not (lib / n).exists() and n not in bundled_elsewhere)
            if not missing:
                return
            for soname in missing:
                self.copy_lib(self.debroot, soname, lib)

    def elves(self) -> Iterator[Path]:
        for path in sorted(self.opt.rglob("*")):
            if is_elf(path):
                yield path

    def launcher(self) -> None:
        out = self.opt / "bin" / "xenhad"
        run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", f'-DPREFIX="{PREFIX}"',
             f'-DPYTHON="python{PYVER}"', "-o", str(out), str(HERE / "launcher.c"),
             f"-Wl,--dynamic-linker={PREFIX}/lib/{LOADER}", "-Wl,-rpath,$ORIGIN/../lib",
             "-Wl,--disable-new-dtags"])
        run(["strip", str(out)])
        share = self.opt / "share"
        docs = share / "doc" / "xenhad"
        docs.mkdir(parents=True)
        for name in ("README.md", "docs/DEPLOYMENT.md", "etc/xenhad.toml"):
            shutil.copy2(ROOT / name, docs / Path(name).name)
        packaging = share / "xenhad"
        packaging.mkdir()
        shutil.copy2(ROOT / "packaging" / "systemd" / "xenhad.service", packaging)
        shutil.copy2(ROOT / "packaging" / "modules-load.d" / "xenhad.conf", packaging)

    def compile(self) -> None:
        # Unchecked-hash pycs stay valid whatever mtimes the package manager restores, and
        # -d names the installed path in tracebacks. Compiled by this interpreter: the pyc
        # format is one per minor version (3.11).
        if sys.version_info[:2] != (3, 11):
            raise BuildError(f"build with CPython {PYVER} (this is {sys.version.split()[0]})")
        for top in (self.opt / "lib" / f"python{PYVER}", self.opt / "lib" / "python3"):
            run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                 "--invalidation-mode", "unchecked-hash", "-s", str(self.stage), "-p", "/",
                 "-x", r"lib2to3|/tests?/", str(top)])

    def audit(self) -> None:
        """Refuse a bundle that would reach outside itself, before anyone installs it."""
        problems = elf_audit.audit(self.opt, prefix=PREFIX)
        if problems:
            raise BuildError("the bundle is not self-contained:\n  " + "\n  ".join(problems))
        info = self.opt / "share" / "xenhad" / "BUILDINFO"
        info.write_text(f"xenhad {self.version}\n" + "\n".join(self.buildinfo) + "\n")

    # -- outputs -------------------------------------------------------------------------

    def tarball(self) -> None:
        self.dist.mkdir(exist_ok=True)
        target = self.tarball_path()
        tmp = target.with_suffix(".tmp")
        with tmp.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                  compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in self.tree():
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(self.stage)))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if info.isreg():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
        tmp.replace(target)

    def tree(self) -> Iterable[Path]:
        yield self.stage / "opt"
        yield from sorted(self.opt.parent.rglob("*"))

    def rpm(self) -> None:
        topdir = self.work / "rpmbuild"
        shutil.rmtree(topdir, ignore_errors=True)
        for sub in ("BUILD", "RPMS", "SPECS", "SOURCES", "BUILDROOT"):
            (topdir / sub).mkdir(parents=True)
        run(["rpmbuild", "-bb", "--quiet",
             "--define", f"_topdir {topdir}",
             "--define", f"xenhad_version {self.version}",
             "--define", f"xenhad_stage {self.stage}",
             "--define", f"xenhad_src {ROOT}",
             str(ROOT / "packaging" / "rpm" / "xenhad.spec")])
        built = topdir / "RPMS" / "x86_64" / self.rpm_path().name
        if not built.exists():
            raise BuildError(f"rpmbuild made no {built}")
        shutil.copy2(built, self.rpm_path())


if __name__ == "__main__":
    raise SystemExit(main())
