"""sushy-tools' Redfish emulator with its fake driver, for the fencing tests.

Run as `python redfish_bmc.py --config FILE`; the tests write FILE (a Flask config: listen
address 127.0.0.1, port, htpasswd file, state dir, TLS cert, fake systems) and start this
as a subprocess. It is the stock `sushy-emulator` with one addition: a fake system whose
entry in SUSHY_EMULATOR_FAKE_SYSTEMS has `"stuck_power": True` accepts ComputerSystem.Reset
ForceOff (HTTP 204, as a real BMC does) but its PowerState stays "On", like a server whose
power controller has failed. The stock fake driver always switches off 1-11 s after the
request (sushy_tools/emulator/resources/systems/fakedriver.py), and its
SUSHY_EMULATOR_DISABLE_POWER_OFF refuses the request with HTTP 400 instead of accepting it,
so neither can show a fencer that an accepted ForceOff is not proof.
"""

from __future__ import annotations

import sys
from typing import Any

from sushy_tools.emulator import main as emulator
from sushy_tools.emulator.resources.systems import fakedriver


class StuckCapableFakeDriver(fakedriver.FakeDriver):  # type: ignore[misc]
    def set_power_state(self, identity: str, state: str) -> Any:
        system = self._get(identity)
        if system.get("stuck_power") and state in ("ForceOff", "GracefulShutdown"):
            return None
        return super().set_power_state(identity, state)


# The emulator looks the driver class up on the module when it first serves a system.
fakedriver.FakeDriver = StuckCapableFakeDriver

if __name__ == "__main__":
    sys.exit(emulator.main())
