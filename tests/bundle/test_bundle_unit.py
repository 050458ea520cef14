"""The systemd unit as dom0's systemd 219 reads it, and as systemd-analyze verifies it.

systemd 219 logs an unknown directive and goes on, so a directive newer than 219 is a
protection that silently does not apply on dom0. The unit may carry one only below a
"# systemd NNN+ only" comment line (NNN > 219) that says so to its reader.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from bundle_env import REPO, Bundle, require, run

UNIT = REPO / "packaging" / "systemd" / "xenhad.service"

# Names of the directives systemd 219 parses, per section (systemd v219,
# src/core/load-fragment-gperf.gperf.m4 for [Unit] and [Service], src/shared/install.c
# for [Install]).
_EXEC = """WorkingDirectory RootDirectory User Group SupplementaryGroups Nice OOMScoreAdjust
IOSchedulingClass IOSchedulingPriority CPUSchedulingPolicy CPUSchedulingPriority
CPUSchedulingResetOnFork CPUAffinity UMask Environment EnvironmentFile StandardInput
StandardOutput StandardError TTYPath TTYReset TTYVHangup TTYVTDisallocate SyslogIdentifier
SyslogFacility SyslogLevel SyslogLevelPrefix Capabilities SecureBits CapabilityBoundingSet
TimerSlackNSec NoNewPrivileges SystemCallFilter SystemCallArchitectures
SystemCallErrorNumber RestrictAddressFamilies LimitCPU LimitFSIZE LimitDATA LimitSTACK
LimitCORE LimitRSS LimitNOFILE LimitAS LimitNPROC LimitMEMLOCK LimitLOCKS LimitSIGPENDING
LimitMSGQUEUE LimitNICE LimitRTPRIO LimitRTTIME ReadWriteDirectories ReadOnlyDirectories
InaccessibleDirectories PrivateTmp PrivateNetwork PrivateDevices ProtectSystem ProtectHome
MountFlags Personality RuntimeDirectoryMode RuntimeDirectory PAMName IgnoreSIGPIPE
UtmpIdentifier UtmpMode SELinuxContext AppArmorProfile SmackProcessLabel"""
_KILL = "SendSIGKILL SendSIGHUP KillMode KillSignal"
_CGROUP = """Slice CPUAccounting CPUShares StartupCPUShares CPUQuota MemoryAccounting
MemoryLimit DeviceAllow DevicePolicy BlockIOAccounting BlockIOWeight StartupBlockIOWeight
BlockIODeviceWeight BlockIOReadBandwidth BlockIOWriteBandwidth Delegate"""
_SERVICE = """PIDFile ExecStartPre ExecStart ExecStartPost ExecReload ExecStop ExecStopPost
RestartSec TimeoutSec TimeoutStartSec TimeoutStopSec WatchdogSec StartLimitInterval
StartLimitBurst StartLimitAction RebootArgument FailureAction Type Restart
PermissionsStartOnly RootDirectoryStartOnly RemainAfterExit GuessMainPID
RestartPreventExitStatus RestartForceExitStatus SuccessExitStatus SysVStartPriority
NonBlocking BusName FileDescriptorStoreMax NotifyAccess Sockets BusPolicy"""
_UNIT = """Description Documentation SourcePath Requires RequiresOverridable Requisite
RequisiteOverridable Wants BindsTo BindTo Conflicts Before After OnFailure PropagatesReloadTo
PropagateReloadTo ReloadPropagatedFrom PropagateReloadFrom PartOf JoinsNamespaceOf
RequiresMountsFor StopWhenUnneeded RefuseManualStart RefuseManualStop AllowIsolate
DefaultDependencies OnFailureJobMode OnFailureIsolate IgnoreOnIsolate IgnoreOnSnapshot
JobTimeoutSec JobTimeoutAction JobTimeoutRebootArgument ConditionPathExists
ConditionPathExistsGlob ConditionPathIsDirectory ConditionPathIsSymbolicLink
ConditionPathIsMountPoint ConditionPathIsReadWrite ConditionDirectoryNotEmpty
ConditionFileNotEmpty ConditionFileIsExecutable ConditionNeedsUpdate ConditionFirstBoot
ConditionKernelCommandLine ConditionArchitecture ConditionVirtualization ConditionSecurity
ConditionCapability ConditionHost ConditionACPower ConditionNull AssertPathExists
AssertPathExistsGlob AssertPathIsDirectory AssertPathIsSymbolicLink AssertPathIsMountPoint
AssertPathIsReadWrite AssertDirectoryNotEmpty AssertFileNotEmpty AssertFileIsExecutable
AssertNeedsUpdate AssertFirstBoot AssertKernelCommandLine AssertArchitecture
AssertVirtualization AssertSecurity AssertCapability AssertHost AssertACPower AssertNull"""
SYSTEMD_219 = {
    "Unit": set(_UNIT.split()),
    "Service": set((_SERVICE + _EXEC + " " + _KILL + " " + _CGROUP).split()),
    "Install": {"Alias", "WantedBy", "RequiredBy", "Also", "DefaultInstance"},
}
# Values 219 accepts where later versions added some (ProtectSystem=strict is 232+).
VALUES_219 = {
    "ProtectSystem": {"yes", "no", "true", "false", "full"},
    "ProtectHome": {"yes", "no", "true", "false", "read-only"},
    "NotifyAccess": {"none", "main", "all"},
    "KillMode": {"control-group", "process", "mixed", "none"},
    "Type": {"simple", "forking", "oneshot", "dbus", "notify", "idle"},
}
NEWER_ONLY = re.compile(r"^# systemd (\d+)\+ only\b")


def directives(text: str) -> list[tuple[str, str, str, int | None]]:
    """(section, name, value, the systemd version a "newer only" comment above names)."""
    found = []
    section, newer = "", None
    for line in text.splitlines():
        if line.startswith("#"):
            marked = NEWER_ONLY.match(line)
            newer = int(marked.group(1)) if marked else newer
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            name, value = line.split("=", 1)
            found.append((section, name.strip(), value.strip(), newer))
        newer = None  # a marker covers the one directive right below its comment lines
    return found


def test_every_directive_exists_in_systemd_219_or_says_it_is_newer() -> None:
    unmarked = []
    for section, name, value, newer in directives(UNIT.read_text()):
        known = name in SYSTEMD_219[section] and value in VALUES_219.get(name, {value})
        if newer is not None:
            assert newer > 219, f"{name}={value} is marked newer-only for {newer}"
        elif not known:
            unmarked.append(f"[{section}] {name}={value}")
    assert not unmarked, f"unknown to systemd 219 and not marked '# systemd NNN+ only': {unmarked}"


def test_the_check_catches_an_unmarked_newer_directive() -> None:
    text = ("[Service]\nProtectSystem=full\nStateDirectory=xenhad\n"
            "# systemd 232+ only\nProtectKernelModules=yes\n")
    parsed = directives(text)
    assert [(n, v) for _, n, v, newer in parsed if newer is None] == [
        ("ProtectSystem", "full"), ("StateDirectory", "xenhad")]
    assert "StateDirectory" not in SYSTEMD_219["Service"]


def test_the_unit_orders_after_xapi_and_lets_only_the_main_pid_notify() -> None:
    parsed = {(s, n): v for s, n, v, newer in directives(UNIT.read_text()) if newer is None}
    assert "xapi-init-complete.target" in parsed[("Unit", "After")].split()
    assert ("Unit", "Requires") not in parsed and ("Unit", "BindsTo") not in parsed
    assert parsed[("Service", "Type")] == "notify"
    assert parsed[("Service", "NotifyAccess")] == "main"
    assert parsed[("Service", "ExecStart")].startswith("/opt/xenhad/bin/xenhad run ")


def test_systemd_analyze_verifies_the_installed_unit(bundle: Bundle, rpm_root: Path) -> None:
    require(shutil.which("systemd-analyze"),
            "no systemd-analyze: scripts/install-bundle-deps installs systemd")
    install = run(["rpm", "--root", str(rpm_root), "-i", "--nodeps", "--noscripts",
                   str(bundle.rpm)])
    assert install.returncode == 0, install.stderr
    # The root needs what verify loads besides the unit: the host's targets (sysinit, ...)
    # and the ExecReload command.
    units = rpm_root / "usr/lib/systemd/system"
    for source in Path("/lib/systemd/system").glob("*.target"):
        if not (units / source.name).exists():
            shutil.copy2(source, units / source.name, follow_symlinks=True)
    (rpm_root / "bin").mkdir(exist_ok=True)
    shutil.copy2(shutil.which("kill") or "/bin/kill", rpm_root / "bin" / "kill")
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={rpm_root}",
                             "xenhad.service"], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "xenhad.service" not in verify.stderr, verify.stderr


@pytest.mark.parametrize("bad", ["ExecStart=/opt/xenhad/bin/nothing", "Typo=yes"])
def test_systemd_analyze_would_catch_a_broken_unit(rpm_root: Path, bad: str) -> None:
    require(shutil.which("systemd-analyze"), "no systemd-analyze")
    units = rpm_root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for source in Path("/lib/systemd/system").glob("*.target"):
        shutil.copy2(source, units / source.name, follow_symlinks=True)
    (units / "broken.service").write_text(f"[Service]\nType=simple\n{bad}\n"
                                          + ("ExecStart=/bin/true\n" if "Exec" not in bad else ""))
    (rpm_root / "bin").mkdir()
    shutil.copy2("/bin/true", rpm_root / "bin" / "true")
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={rpm_root}",
                             "broken.service"], capture_output=True, text=True, timeout=60)
    assert verify.returncode != 0 or "broken.service" in verify.stderr
