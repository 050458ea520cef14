"""Which VM.start errors send a VM to another host, and how status says what cannot move."""

from __future__ import annotations

import pytest

from xenhad import status
from xenhad.recovery.events import StartOutcome
from xenhad.recovery.executor import _classify
from xenhad.xapi.errors import XapiError


@pytest.mark.parametrize("code", [
    "VM_REQUIRES_SR", "VM_REQUIRES_NETWORK", "VM_REQUIRES_GPU", "VM_REQUIRES_VGPU",
    "VM_REQUIRES_IOMMU", "HOST_NOT_ENOUGH_PCPUS", "VM_INCOMPATIBLE_WITH_THIS_HOST"])
def test_a_host_reason_is_a_refusal_not_a_failure(code: str) -> None:
    outcome, got, _ = _classify(XapiError(code, ["OpaqueRef:vm", "OpaqueRef:x"]))
    assert (outcome, got) == (StartOutcome.REFUSED, code)


def test_memory_is_still_a_retry_and_a_template_a_failure() -> None:
    assert _classify(XapiError("HOST_NOT_ENOUGH_FREE_MEMORY", ["1", "0"]))[0] \
        is StartOutcome.RETRY
    assert _classify(XapiError("VM_IS_TEMPLATE", ["OpaqueRef:vm", "start"]))[0] \
        is StartOutcome.FAILED


def test_status_lists_protected_vms_no_other_host_can_run() -> None:
    text = status.render({"host": "host1", "role": "master", "master": "host1",
                          "quorate": True, "sees": 3, "members": 3,
                          "cannot_restart_elsewhere": [
                              {"name": "local001", "uuid": "u", "host": "host2",
                               "why": "its disk is on SR Local storage on host2, which no "
                                      "other host sees"}]})
    assert "protected VMs no other host can run (1): not restarted if their host dies" in text
    assert ("  local001 on host2: its disk is on SR Local storage on host2, which no other "
            "host sees") in text
