"""An IPMI 2.0 (lanplus) BMC on loopback, built on pyghmi's Bmc class.

Run as its own process (pyghmi's server keeps process-wide state):
    python -m xenhad.sim.ipmi_bmc --address 127.0.0.1 --port 0 --user admin \
        --password-file F [--power on|off] [--stuck] [--control URL --host NAME]

It prints `READY <port>` on stdout once it listens, and serves chassis power control and
status like pyghmi's own fakebmc (pyghmi/cmd/fakebmc.py). Alone, it keeps its own power
state (the fencing tests use it so). With `--control`, it is the BMC of one simulated host:
power status is the simulator's physical truth and "power off" crashes that host, through
the simulator's control API, so xenhad's IPMI backend and Debian's fence_ipmilan fence
simulated hosts end to end. `--stuck` models a BMC whose power controller is broken: "chassis
power off" is accepted (completion code 0) but the chassis stays on, which is what a fencer
must never mistake for success.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

import pyghmi.ipmi.bmc as bmc
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

_SHA1 = 1
_NO_CIPHER_SUITE_MATCH = 0x11  # IPMI 2.0 table 13-15, RMCP+ status codes


class Suite3OnlySession(serversession.ServerSession):  # type: ignore[misc]
    """pyghmi's server session answers every RMCP+ open-session request as cipher suite 3
    (SHA-1) whatever the client proposed, so a client proposing suite 17 (SHA-256, pyghmi's
    own first choice) gets SHA-1 RAKP messages it cannot parse. A real suite-3-only BMC
    refuses the proposal with "no cipher suite match" and the client retries with SHA-1;
    this session does that.
    """

    def __init__(self, authdata, kg, clientaddr, netsocket, request, uuid, bmc):  # type: ignore[no-untyped-def]
        request = bytearray(request)
        auth_algo = request[12] & 0x3F if len(request) > 12 else _SHA1
        if auth_algo == _SHA1:
            super().__init__(authdata, kg, clientaddr, netsocket, request, uuid, bmc)
            return
        # Refuse without keeping a session, so the retry reaches sessionless_data again.
        self.socket = netsocket
        self.sockaddr = clientaddr
        reply = bytearray([request[0], _NO_CIPHER_SUITE_MATCH, 0, 0]) + request[4:8]
        self.servermode = True
        self.ipmiversion = 2.0
        self.authtype = 6
        self.sessionid = 0
        self.sequencenumber = 0
        self.integrityalgo = 0
        self.confalgo = 0
        self.lastpayload = None
        self.pendingpayloads = []
        self.send_payload(
            reply, ipmisession.constants.payload_types["rmcpplusopenresponse"], retry=False
        )


serversession.ServerSession = Suite3OnlySession


class Chassis:
    """The power a BMC controls: its own switch when alone."""

    def __init__(self, power: str) -> None:
        self.power = power

    def state(self) -> str:
        return self.power

    def off(self) -> None:
        self.power = "off"

    def on(self) -> None:
        self.power = "on"


class SimulatedChassis(Chassis):
    """One simulated host's power, read and switched through the simulator's control API."""

    def __init__(self, control_url: str, host: str) -> None:
        super().__init__("on")
        self.control_url = control_url.rstrip("/")
        self.host = host

    def _call(self, path: str, body: dict[str, str] | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(self.control_url + path, data=data, timeout=5) as reply:
            return json.loads(reply.read() or b"null")

    def state(self) -> str:
        truth = self._call("/truth")
        assert isinstance(truth, dict)
        return "on" if truth["hosts"][self.host]["powered"] else "off"

    def off(self) -> None:
        if self.state() == "on":
            self._call("/crash", {"host": self.host})

    def on(self) -> None:
        if self.state() == "off":
            self._call("/boot", {"host": self.host})


class LoopbackBmc(bmc.Bmc):  # type: ignore[misc]
    def __init__(
        self, authdata: dict[str, str], address: str, port: int, chassis: Chassis, stuck: bool
    ) -> None:
        super().__init__(authdata, port=port, address=address)
        # pyghmi routes session packets by the port it was given: with port 0 (let the
        # kernel choose, so parallel tests never collide) it must learn the real one.
        self.port = self.serversocket.getsockname()[1]
        self.chassis = chassis
        self.stuck = stuck

    def get_power_state(self) -> str:
        return self.chassis.state()

    def is_active(self) -> bool:
        return self.chassis.state() == "on"

    def power_off(self) -> None:
        if not self.stuck:
            self.chassis.off()
        print("power off" + (" (stuck: still on)" if self.stuck else ""), flush=True)

    def power_shutdown(self) -> None:
        self.power_off()

    def power_on(self) -> None:
        self.chassis.on()
        print("power on", flush=True)

    def power_cycle(self) -> None:
        self.chassis.off()
        self.chassis.on()

    def power_reset(self) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--power", choices=("on", "off"), default="on")
    parser.add_argument("--stuck", action="store_true")
    parser.add_argument("--control", default="", help="the simulator's control API URL")
    parser.add_argument("--host", default="", help="the simulated host this BMC powers")
    args = parser.parse_args()
    with open(args.password_file, encoding="utf-8") as f:
        password = f.read().rstrip("\n")
    chassis = (SimulatedChassis(args.control, args.host) if args.control
               else Chassis(args.power))
    server = LoopbackBmc({args.user: password}, args.address, args.port, chassis, args.stuck)
    port = server.serversocket.getsockname()[1]
    print(f"READY {port}", flush=True)
    server.listen(timeout=30)  # serves until the process is killed
    return 0


if __name__ == "__main__":
    sys.exit(main())
