"""The RPM as CentOS 7's rpm 4.11 and yum will see it: what it requires, how its payload is
compressed, where its files land, and what its scriptlets do on install, upgrade and erase.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from bundle_env import PREFIX, Bundle, require, run

pytestmark = pytest.mark.timeout(180)

# The rpmlib() features rpm 4.11 provides (lib/rpmds.c, the rpmlibProvides table, whose
# newest entry then was TildeInVersions of 4.10; LargeFiles and RichDependencies came with
# 4.12, CaretInVersions with 4.15, PayloadIsZstd later): a package requiring any other one
# cannot be installed on dom0.
RPMLIB_4_11 = {
    "BuiltinLuaScripts", "CompressedFileNames", "ConcurrentAccess", "ExplicitPackageProvide",
    "FileCaps", "FileDigests", "HeaderLoadSortsTags", "PartialHardlinkSets",
    "PayloadFilesHavePrefix", "PayloadIsBzip2", "PayloadIsLzma", "PayloadIsXz",
    "ScriptletExpansion", "ScriptletInterpreterArgs", "TildeInVersions",
    "VersionedDependencies",
}


def query(rpm: Path, *args: str) -> str:
    result = run(["rpm", "-qp", *args, str(rpm)])
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_requires_only_what_every_dom0_has(bundle: Bundle) -> None:
    require(shutil.which("rpm"), "no rpm command")
    requires = {line.split()[0] for line in query(bundle.rpm, "--requires").splitlines()}
    features = {r[len("rpmlib("):-1] for r in requires if r.startswith("rpmlib(")}
    assert features <= RPMLIB_4_11, f"newer than rpm 4.11: {features - RPMLIB_4_11}"
    assert requires - {f"rpmlib({f})" for f in features} == {"/bin/sh", "systemd"}, (
        "no library or interpreter of dom0's may be required: the bundle carries its own")
    assert query(bundle.rpm, "--qf", "%{PAYLOADCOMPRESSOR}") in ("xz", "gzip")


def test_files_land_where_the_unit_expects_them(bundle: Bundle, rpm_root: Path) -> None:
    install = run(["rpm", "--root", str(rpm_root), "-i", "--nodeps", "--noscripts",
                   str(bundle.rpm)])
    assert install.returncode == 0, install.stderr
    unit = (rpm_root / "usr/lib/systemd/system/xenhad.service").read_text()
    for command in re.findall(r"^Exec\w+=(\S+)", unit, re.M):
        if command.startswith(PREFIX):
            assert (rpm_root / command.lstrip("/")).stat().st_mode & 0o111, command
    assert "--config /etc/xenhad/xenhad.toml" in unit
    assert (rpm_root / "etc/xenhad/xenhad.toml").is_file()
    for folder in ("etc/xenhad", "var/lib/xenhad"):
        assert (rpm_root / folder).stat().st_mode & 0o777 == 0o700, folder
    for folder in re.findall(r"^ReadWriteDirectories=(\S+)", unit, re.M):
        assert (rpm_root / folder.lstrip("/")).is_dir(), folder
    docs = re.search(r"^Documentation=file://(\S+)", unit, re.M)
    assert docs and (rpm_root / docs.group(1).lstrip("/")).is_file()
    modules = (rpm_root / "usr/lib/modules-load.d/xenhad.conf").read_text()
    assert [m for m in modules.splitlines() if m and not m.startswith("#")] == ["xen_wdt"]
    assert (rpm_root / "usr/bin/xenhad").resolve(strict=False) == Path(f"{PREFIX}/bin/xenhad")
    flags = query(bundle.rpm, "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]")
    assert "cn /etc/xenhad/xenhad.toml" in flags.splitlines(), "%config(noreplace)"


def test_install_starts_nothing_upgrade_restarts_erase_stops_and_keeps_the_journal(
    bundle: Bundle, rpm_root: Path
) -> None:
    calls = _fake_dom0(rpm_root)
    rpm = ["rpm", "--root", str(rpm_root), "--nodeps"]

    assert run([*rpm, "-i", str(bundle.rpm)]).returncode == 0
    assert all("start" not in c and "enable" not in c for c in _calls(calls)), _calls(calls)

    config = rpm_root / "etc/xenhad/xenhad.toml"
    config.write_text("[peers]\nsecret_file = \"/etc/xenhad/pool-secret\"\n")
    journal = rpm_root / "var/lib/xenhad/journal.jsonl"
    journal.write_text('{"kind": "opened"}\n')
    calls.write_text("")
    upgrade = run([*rpm, "-U", "--replacepkgs", str(bundle.rpm)])
    assert upgrade.returncode == 0, upgrade.stderr
    assert "secret_file" in config.read_text(), "an upgrade replaced the operator's config"
    assert journal.exists()
    assert "try-restart xenhad.service" in _calls(calls)

    calls.write_text("")
    erase = run([*rpm, "-e", "xenhad"])
    assert erase.returncode == 0, erase.stderr
    assert {"stop xenhad.service", "--no-reload disable xenhad.service"} <= set(_calls(calls))
    assert journal.read_text() == '{"kind": "opened"}\n', "erase must leave the journal"
    assert not (rpm_root / PREFIX.lstrip("/")).exists()


def _fake_dom0(root: Path) -> Path:
    """Just enough of a dom0 for the scriptlets: a /bin/sh (the host's dash and the
    libraries it needs), /dev/null and a systemctl that records its arguments."""
    require(shutil.which("dash") and shutil.which("ldd"), "no dash/ldd to run scriptlets")
    dash = Path(shutil.which("dash") or "")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(dash, root / "bin" / "sh")
    libs = subprocess.run(["ldd", str(dash)], capture_output=True, text=True).stdout
    for path in re.findall(r"(/\S+\.so[.\d]*)", libs):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(path).resolve(), target)
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    calls = root / "systemctl.calls"
    calls.write_text("")
    systemctl = root / "bin" / "systemctl"
    systemctl.write_text('#!/bin/sh\necho "$*" >> /systemctl.calls\n')
    systemctl.chmod(0o755)
    return calls


def _calls(calls: Path) -> list[str]:
    return calls.read_text().splitlines()
