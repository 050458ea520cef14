"""What one liveness probe costs the daemon, in CPU, over http and https (xapi's default),
on a fresh connection and on a kept-alive one.

Run: .venv/bin/python bench/probe_cost.py [--probes 315] [--rounds 30]
A small XML-RPC server in another process answers every probe HOST_IS_SLAVE, as a slave's
xapi does, over plain HTTP and over TLS (a self-signed certificate made with the openssl
command). The daemon's probe (xenhad.xapi.probe) is timed in this process only: CPU seconds
per probe, sequentially and 63 at once (a tick of a 64-host pool), each on a new connection.
Then the same against the simulator in another process (`xenhad sim --hosts 64`, over http
and over TLS as stunnel serves a real host): one probe of each of the 63 slaves at once, a
tick of a daemon without peers, `--rounds` times, on a fresh connection each (OneShotConnections,
the probe before 2026-12-07) and on the daemon's kept-alive ones (ProbeConnections, past
the first round). Also the cost of building the TLS context, which each probe paid until
probe.py shared one. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from footprint import certificate  # bench/: one self-signed pair for both

from xenhad.xapi.probe import OneShotConnections, ProbeConnections, probe

SERVER = r"""
import http.server, socketserver, ssl, sys, xmlrpc.client
body = xmlrpc.client.dumps(({"Status": "Failure",
                             "ErrorDescription": ["HOST_IS_SLAVE", "127.0.0.1"]},),
                           methodresponse=True).encode()
class Slave(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
    def handle(self):
        try:
            super().handle()
        except OSError:
            pass
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 256
    def handle_error(self, request, address):
        pass
server = Server(("127.0.0.1", 0), Slave)
if len(sys.argv) > 1:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def serve(*tls: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, *tls], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def cpu_per_probe(url: str, probes: int, at_once: int) -> float:
    for _ in range(5):  # warm up: imports, the shared TLS context
        await probe(url, timeout=5)
    rounds = max(1, probes // at_once)
    started = time.process_time()
    for _ in range(rounds):
        results = await asyncio.gather(*(probe(url, timeout=5) for _ in range(at_once)))
        missed = [r.detail for r in results if not r.is_slave]
        if missed:
            raise SystemExit(f"a probe was not answered: {missed[0]}")
    return (time.process_time() - started) / (rounds * at_once)


def simulator(hosts: int, *tls: str) -> tuple[subprocess.Popen[str], list[str]]:
    """A simulated pool in its own process; the URLs of its slaves."""
    argv = [sys.executable, "-m", "xenhad.sim", "--hosts", str(hosts), "--vms", "0",
            "--base-address", "127.0.1.2"]
    if tls:
        argv += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return proc, [h["url"] for h in info["hosts"] if h["uuid"] != info["master"]]


async def cpu_per_tick_probe(urls: list[str], rounds: int,
                             keep: bool) -> tuple[float, int]:
    """CPU per probe over `rounds` ticks that each probe every URL at once, after one
    unmeasured tick (imports, the TLS context, and the kept connections opened); with the
    connections opened during the measured ticks."""
    conns = ProbeConnections() if keep else OneShotConnections()
    await asyncio.gather(*(probe(u, timeout=5, connections=conns) for u in urls))
    opened = conns.opened
    started = time.process_time()
    for _ in range(rounds):
        results = await asyncio.gather(*(probe(u, timeout=5, connections=conns) for u in urls))
        missed = [r.detail for r in results if not r.is_slave]
        if missed:
            raise SystemExit(f"a probe was not answered: {missed[0]}")
    cpu = (time.process_time() - started) / (rounds * len(urls))
    conns.close()
    return cpu, conns.opened - opened


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=315)
    ap.add_argument("--rounds", type=int, default=30,
                    help="ticks of 63 probes against the simulator, per row")
    args = ap.parse_args()
    socket.setdefaulttimeout(10)
    with tempfile.TemporaryDirectory(prefix="xh-probe-") as tmp:
        cert, key = certificate(Path(tmp))
        plain, plain_port = serve()
        tls, tls_port = serve(cert, key)
        try:
            print("A small server, a new connection per probe:\n")
            print("| probe | one at a time | 63 at once |\n|---|---|---|")
            for scheme, port in (("http", plain_port), ("https", tls_port)):
                url = f"{scheme}://127.0.0.1:{port}/"
                one = asyncio.run(cpu_per_probe(url, args.probes // 3, 1))
                many = asyncio.run(cpu_per_probe(url, args.probes, 63))
                print(f"| {scheme} | {one * 1e3:.2f} ms CPU | {many * 1e3:.2f} ms CPU |")
        finally:
            plain.kill()
            tls.kill()
        print(f"\nThe simulator (64 hosts), 63 slaves probed at once, {args.rounds} ticks:\n")
        print("| probe | fresh connection | kept-alive | ratio | connections opened (fresh, "
              "kept-alive) |\n|---|---|---|---|---|")
        for scheme, tls_files in (("http", ()), ("https", (cert, key))):
            sim, urls = simulator(64, *tls_files)
            try:
                fresh, fresh_opened = asyncio.run(cpu_per_tick_probe(urls, args.rounds, False))
                kept, kept_opened = asyncio.run(cpu_per_tick_probe(urls, args.rounds, True))
            finally:
                sim.terminate()
                sim.wait(10)
            print(f"| {scheme} | {fresh * 1e3:.3f} ms CPU | {kept * 1e3:.3f} ms CPU | "
                  f"{fresh / kept:.1f}x | {fresh_opened}, {kept_opened} |")
        print("\nA daemon without peers probes 63 hosts every 2 s tick: a probe's CPU x 63 / 2 s "
              "is its share of a core.")
    started = time.process_time()
    for _ in range(20):
        ssl.create_default_context()
    context = (time.process_time() - started) / 20
    print(f"\nBuilding a TLS context (what each https probe paid before it was shared): "
          f"{context * 1e3:.1f} ms CPU")


if __name__ == "__main__":
    main()
