"""What one liveness probe costs the daemon, in CPU, over http and https (xapi's default).

Run: .venv/bin/python bench/probe_cost.py [--probes 300]
A small XML-RPC server in another process answers every probe HOST_IS_SLAVE, as a slave's
xapi does, over plain HTTP and over TLS (a self-signed certificate made with the openssl
command). The daemon's probe (xenhad.xapi.probe) is timed in this process only: CPU seconds
per probe, sequentially and 63 at once (a tick of a 64-host pool). Also the cost of building
the TLS context, which each probe paid until probe.py shared one. Prints numbers; asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xenhad.xapi.probe import probe

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


def certificate(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=315)
    args = ap.parse_args()
    socket.setdefaulttimeout(10)
    with tempfile.TemporaryDirectory(prefix="xh-probe-") as tmp:
        cert, key = certificate(Path(tmp))
        plain, plain_port = serve()
        tls, tls_port = serve(cert, key)
        try:
            print("| probe | one at a time | 63 at once |\n|---|---|---|")
            for scheme, port in (("http", plain_port), ("https", tls_port)):
                url = f"{scheme}://127.0.0.1:{port}/"
                one = asyncio.run(cpu_per_probe(url, args.probes // 3, 1))
                many = asyncio.run(cpu_per_probe(url, args.probes, 63))
                print(f"| {scheme} | {one * 1e3:.2f} ms CPU | {many * 1e3:.2f} ms CPU |")
        finally:
            plain.kill()
            tls.kill()
    started = time.process_time()
    for _ in range(20):
        ssl.create_default_context()
    context = (time.process_time() - started) / 20
    print(f"\nBuilding a TLS context (what each https probe paid before it was shared): "
          f"{context * 1e3:.1f} ms CPU")


if __name__ == "__main__":
    main()
