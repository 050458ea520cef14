"""A small IPMI 2.0 (lanplus) BMC on loopback for the fencing tests, built on pyghmi's Bmc.

Run as a subprocess by the tests:
    python ipmi_bmc.py --port 0 --user admin --password-file F [--power on|off] [--stuck]

It binds 127.0.0.1 only, prints `READY <port>` on stdout once it listens, and serves chassis
power control and status like pyghmi's own fakebmc (pyghmi/cmd/fakebmc.py). `--stuck` models
a BMC whose power controller is broken: "chassis power off" is accepted (completion code 0)
but the chassis stays on, which is what a fencer must never mistake for success.
"""

from __future__ import annotations

import argparse
import sys

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


class LoopbackBmc(bmc.Bmc):  # type: ignore[misc]
    def __init__(self, authdata: dict[str, str], port: int, power: str, stuck: bool) -> None:
        super().__init__(authdata, port=port, address="127.0.0.1")
        # pyghmi routes session packets by the port it was given: with port 0 (let the
        # kernel choose, so parallel tests never collide) it must learn the real one.
        self.port = self.serversocket.getsockname()[1]
        self.powerstate = power
        self.stuck = stuck

    def get_power_state(self) -> str:
        return self.powerstate

    def is_active(self) -> bool:
        return self.powerstate == "on"

    def power_off(self) -> None:
        if not self.stuck:
            self.powerstate = "off"
        print("power off" + (" (stuck: still on)" if self.stuck else ""), flush=True)

    def power_shutdown(self) -> None:
        self.power_off()

    def power_on(self) -> None:
        self.powerstate = "on"
        print("power on", flush=True)

    def power_cycle(self) -> None:
        self.power_on()

    def power_reset(self) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--power", choices=("on", "off"), default="on")
    parser.add_argument("--stuck", action="store_true")
    args = parser.parse_args()
    with open(args.password_file, encoding="utf-8") as f:
        password = f.read().rstrip("\n")
    server = LoopbackBmc({args.user: password}, args.port, args.power, args.stuck)
    port = server.serversocket.getsockname()[1]
    print(f"READY {port}", flush=True)
    server.listen(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
