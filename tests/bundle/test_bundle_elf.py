"""Every ELF object of the bundle, with the newest GLIBC symbol version it needs (readelf's
version-needs section, what `objdump -T` shows per symbol), against what the bundle's own
libc defines. Nothing of the bundle may lean on the host's libc: the interpreter and the
launcher are started by the bundle's loader, and the wheels' compiled modules must keep to
manylinux2014's glibc 2.17 whatever the bundle carries.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import elf_audit
import pytest
from bundle_env import PREFIX, Bundle, require

MANYLINUX2014 = (2, 17)


@pytest.fixture(scope="module")
def opt(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require(shutil.which("readelf"), "no readelf: scripts/install-bundle-deps installs binutils")
    root = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(bundle.tarball) as tar:
        tar.extractall(root, filter="tar")
    yield root / PREFIX.lstrip("/")


def test_no_elf_object_needs_a_glibc_newer_than_the_one_it_gets(opt: Path) -> None:
    provided = elf_audit.glibc_provided(opt / "lib" / "libc.so.6")
    table, too_new, wheels = [], [], []
    for path in elf_audit.elves(opt):
        elf = elf_audit.read(path)
        name = str(path.relative_to(opt))
        need = elf.glibc_needed
        table.append(f"{'.'.join(map(str, need)) if need else '-':>6}  {name}")
        if need is not None and need > provided:
            too_new.append(name)
        if "dist-packages" in name and need is not None and need > MANYLINUX2014:
            wheels.append(f"{name} needs GLIBC_{'.'.join(map(str, need))}")
    print(f"bundle libc: GLIBC_{'.'.join(map(str, provided))}\n" + "\n".join(table))
    assert len(table) > 20, "the walk found too few ELF objects to be the bundle"
    assert not too_new, f"need more than the bundle's GLIBC_{provided}: {too_new}"
    assert not wheels, f"compiled modules beyond manylinux2014: {wheels}"


def test_what_bin_starts_uses_the_bundles_loader_and_libraries(opt: Path) -> None:
    for name in ("xenhad", "python3.11"):
        elf = elf_audit.read(opt / "bin" / name)
        assert elf.interpreter == f"{PREFIX}/lib/ld-linux-x86-64.so.2"
        assert elf.rpath == ("$ORIGIN/../lib",), "DT_RPATH, inherited by what it loads"
        assert not elf.runpath
    assert elf_audit.audit(opt, prefix=PREFIX) == []
