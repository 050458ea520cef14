"""Every host's xapi endpoints: XML-RPC (POST / and /RPC2) and JSON-RPC (POST /jsonrpc)
over TCP on the host's own loopback address and over its local UNIX socket.

One acceptor thread watches every listening socket; each connection gets a thread. A
crashed host's listeners are closed (connections refused) and its open connections reset;
a black-holed request is held without an answer until the client gives up or the cap.

Connections persist as xapi's do (ocaml/libs/http-lib/http_svr.ml, handle_connection): after
an answer, the next request is read on the same connection unless the request said
`Connection: close` or was HTTP/1.0 without keep-alive; the first request's headers must
come within header_read_timeout_tcp, later ones have no timeout at all. What closes an idle
connection on a real host is stunnel, which terminates TLS on 443 in front of xapi's port 80
(one xapi connection per client connection): xapi writes its stunnel.conf with no
TIMEOUTidle (ocaml/xapi/xapi_stunnel_server.ml, unless STUNNEL_IDLE_TIMEOUT is set in its
environment), so stunnel's default applies, 43200 s (stunnel src/options.c). A restarted
xapi is a new process: the kernel closed every connection of the old one.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import select
import selectors
import socket
import ssl
import struct
import threading
import time
import xmlrpc.client
from typing import Any

from xenhad.sim import api
from xenhad.sim import messages as _messages  # noqa: F401  (registers the message class)
from xenhad.sim.model import I32, XapiFailure
from xenhad.sim.pool import HostState, SimPool

_MAX_BODY = 16 * 1024 * 1024

FIRST_REQUEST_SECONDS = 10.0
"""How long a new TCP connection's first request may take to arrive, per read:
header_read_timeout_tcp (ocaml/xapi/xapi_globs.ml), which http_svr.ml handle_connection
applies to a connection's first request only."""


def to_xmlrpc(value: Any) -> Any:
    """xapi's XML-RPC marshalling: int64 as decimal strings, int32 as <int>."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, I32):
        return int(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_xmlrpc(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_xmlrpc(v) for v in value]
    return value


def to_json(value: Any) -> Any:
    """JSON-RPC (ocaml-rpc Jsonrpc): ints stay numbers, datetimes are their strings."""
    if isinstance(value, xmlrpc.client.DateTime):
        return value.value
    if isinstance(value, I32):
        return int(value)
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def _from_wire(value: Any) -> Any:
    if isinstance(value, xmlrpc.client.DateTime):
        return value.value
    if isinstance(value, dict):
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_from_wire(v) for v in value]
    return value


def xmlrpc_reply(name: str, kind: str, value: Any) -> bytes:
    """The body xapi answers an XML-RPC call with: `kind` "ok" with the value, or "fail"
    with [code, params...]. xenhad.virtual parses the same bytes as a client would."""
    if kind == "ok" and name == "system.listMethods":
        # api_server.ml: its answer is the bare array, with no Status/Value envelope.
        text = xmlrpc.client.dumps((to_xmlrpc(value),), methodresponse=True)
    else:
        out = ({"Status": "Success", "Value": to_xmlrpc(value)} if kind == "ok"
               else {"Status": "Failure", "ErrorDescription": value})
        text = xmlrpc.client.dumps((out,), methodresponse=True, allow_none=True)
    return _as_xapi_writes(text.encode("utf-8"))


def _as_xapi_writes(data: bytes) -> bytes:
    # xapi's Xmlrpc.to_string writes no whitespace between elements; Python's dumps
    # does, and a strict client (Xen Orchestra's, which keeps text nodes) reads
    # those as values. Text inside a value has its < and > escaped, so a newline
    # between two tags is only ever formatting.
    data = data.replace(b">\n<", b"><")
    # rpclib's Xmlrpc writes a string as <value>text</value>; an empty <string/>
    # reads as nothing at all to such a client (a task's empty result went missing).
    return data.replace(b"<value><string></string></value>", b"<value></value>")


class _Held(Exception):
    pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "xapi"
    sim: RpcServer
    sim_host: HostState
    sim_channel: str
    sim_raw: socket.socket
    """The TCP socket itself (under TLS, the one the TLS socket wraps)."""
    sim_epoch: int
    """The host's epoch when the connection was accepted: its xapi of the time."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return self.sim_channel

    def handle(self) -> None:
        # http_svr.ml handle_connection: requests are read one after the other until one
        # asks to close; only the first has a header timeout. Over TCP an idle connection is
        # closed by stunnel after its idle timeout (see the module's docstring); the local
        # socket has neither (xapi.ml listen_unix_socket: no header timeouts, no stunnel).
        idle = self.sim.pool.spec.idle_close_seconds if self.sim_channel == "tcp" else None
        first = min(FIRST_REQUEST_SECONDS, idle) if idle is not None else None
        self.connection.settimeout(first)
        self.close_connection = True
        self.handle_one_request()
        self.connection.settimeout(idle)
        while not self.close_connection:
            self.handle_one_request()

    def _restarted(self) -> bool:
        """The host's xapi restarted (or lost its power) since this connection was accepted:
        the old process's connections were closed by the kernel when it exited, so this
        request reaches nobody. Checked when a request arrives rather than at the restart:
        the client learns it at the same moment, when it sends on the connection."""
        if self.sim_host.epoch == self.sim_epoch:
            return False
        self.close_connection = True
        return True

    def do_GET(self) -> None:
        if self._restarted():
            return
        self._reply(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        if self._restarted():
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._reply(400, b"bad Content-Length", "text/plain")
            return
        body = self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        try:
            # http_svr.ml finds a handler by the longest prefix of the path: /jsonrpc is
            # JSON-RPC, anything else under / (/RPC2, /xmlrpc, ...) is post_root's XML-RPC.
            if path.startswith("/jsonrpc"):
                self._jsonrpc(body)
            elif path.startswith("/json"):
                # post_json (XML-RPC calls spelled in JSON) is not modelled.
                self._reply(404, b"not found", "text/plain")
            elif path.startswith("/"):
                self._xmlrpc(body)
            else:
                self._reply(404, b"not found", "text/plain")
        except _Held:
            self.close_connection = True

    # ---- protocol ------------------------------------------------------------------

    def _dispatch(self, name: str, params: list[Any]) -> Any:
        """Run the call; returns ("ok", value) or ("fail", [code, params...])."""
        sim = self.sim
        pool = sim.pool
        host = self.sim_host
        source = None
        if self.sim_channel == "tcp":
            source = pool.host_by_address(self.client_address[0])
        elif self.sim_channel == "unix":
            source = host
        with pool.lock:
            if not host.powered:
                raise _Held()
            admission = api.admit(pool, host, self.sim_channel, source, name)
            epoch = admission.epoch
        if admission.hold:
            self._hold(epoch)
        if admission.delay:
            time.sleep(admission.delay)
        with pool.lock:
            injected = api.injected_failure(host, name)
            if injected is not None:
                return ("fail", injected)
            try:
                return ("ok", api.call(pool, host, self.sim_channel, source, name, params))
            except XapiFailure as e:
                return ("fail", e.description())
            except api.Blackhole:
                pass
            except Exception as e:  # the simulator never crashes on input
                return ("fail", ["INTERNAL_ERROR", f"{type(e).__name__}: {e}"])
        self._hold(epoch)
        raise _Held()

    def _xmlrpc(self, body: bytes) -> None:
        try:
            params, name = xmlrpc.client.loads(body, use_builtin_types=False)
            if not isinstance(name, str):
                raise ValueError("no methodName")
        except Exception as e:
            out = {"Status": "Failure",
                   "ErrorDescription": ["XMLRPC_UNMARSHAL_FAILURE", str(body[:200], "utf-8",
                                                                        "replace"), str(e)]}
            self._reply(200, _as_xapi_writes(
                xmlrpc.client.dumps((out,), methodresponse=True).encode()), "text/xml")
            return
        kind, value = self._dispatch(name, [_from_wire(p) for p in params])
        self._reply(200, xmlrpc_reply(name, kind, value), "text/xml")

    def _jsonrpc(self, body: bytes) -> None:
        # api_server.ml: v1 answers {result, error, id}; v2 answers errors as
        # {code: 1, message: CODE, data: [params]} (api_server_common.ml).
        try:
            req = json.loads(body)
            if not isinstance(req, dict) or not isinstance(req.get("method"), str):
                raise ValueError("a JSON-RPC request is an object with a method")
            params = req.get("params", [])
            if not isinstance(params, list):
                raise ValueError("params must be a list")
        except (ValueError, UnicodeDecodeError) as e:
            err = ["JSONRPC_UNMARSHAL_FAILURE", str(e)]
            reply: dict[str, Any] = {"jsonrpc": "2.0", "error": {
                "code": 1, "message": err[0], "data": err[1:]}, "id": None}
            self._reply(200, json.dumps(reply).encode(), "application/json")
            return
        v2 = req.get("jsonrpc") == "2.0"
        rid = req.get("id")
        kind, value = self._dispatch(req["method"], params)
        if kind == "ok":
            reply = {"result": to_json(value), "id": rid}
            if v2:
                reply["jsonrpc"] = "2.0"
            else:
                reply["error"] = None
        elif v2:
            reply = {"jsonrpc": "2.0", "error": {"code": 1, "message": value[0],
                                                 "data": value[1:]}, "id": rid}
        else:
            reply = {"result": None, "error": value, "id": rid}
        self._reply(200, json.dumps(reply).encode(), "application/json")

    def _reply(self, status: int, data: bytes, ctype: str) -> None:
        if status != 200:
            # http_svr.ml answers its errors with response_error_html: Connection: close.
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        # http_svr.ml response_of_request: every answer says whether the connection stays
        # open, as the request asked (HTTP/1.0 or `Connection: close`: it closes).
        self.send_header("Connection", "close" if self.close_connection else "keep-alive")
        self.end_headers()
        self.wfile.write(data)

    def _hold(self, epoch: int) -> None:
        """Never answer: wait until the client goes away, the cap passes, we stop, or the
        xapi holding the call restarts on a powered host (Xapi_fuse exits the process and the
        kernel closes its connections: a client waiting on it learns at once). A host that
        lost its power closes nothing: its connections just fall silent."""
        end = time.monotonic() + self.sim.pool.spec.blackhole_cap_seconds
        sock = self.sim_raw
        tls = sock is not self.connection
        host = self.sim_host
        while (time.monotonic() < end and self.sim.pool.running
               and (host.epoch == epoch or not host.powered)):
            try:
                ready, _, _ = select.select([sock], [], [], 0.1)
                # Under TLS, bytes from a client that waits for its answer are its
                # close_notify: it is going away.
                if ready and (tls or not sock.recv(1, socket.MSG_PEEK)):
                    break
            except (OSError, ValueError):
                break
        raise _Held()


class RpcServer:
    def __init__(self, pool: SimPool) -> None:
        self.pool = pool
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._listeners: dict[str, list[socket.socket]] = {}
        self._conns: dict[str, set[socket.socket]] = {}
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="sim-accept", daemon=True)
        self._closed = False
        self.accepted: dict[str, int] = {}
        """TCP connections accepted, by host uuid."""
        self._tls: ssl.SSLContext | None = None
        spec = pool.spec
        if spec.tls_cert is not None and spec.tls_key is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(spec.tls_cert, spec.tls_key)

    def start(self) -> None:
        self._thread.start()

    def open(self, h: HostState) -> None:
        """Start listening for the host (idempotent; same port as before after a reboot)."""
        with self._mutex:
            if self._listeners.get(h.uuid):
                return
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((h.address, h.port))
            tcp.listen(128)
            tcp.setblocking(False)
            h.port = tcp.getsockname()[1]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(h.socket_path)
            uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            uds.bind(h.socket_path)
            uds.listen(128)
            uds.setblocking(False)
            self._listeners[h.uuid] = [tcp, uds]
            self._sel.register(tcp, selectors.EVENT_READ, (h, "tcp"))
            self._sel.register(uds, selectors.EVENT_READ, (h, "unix"))
        self._wake()

    def open_connections(self, h: HostState) -> int:
        with self._mutex:
            return len(self._conns.get(h.uuid, ()))

    def close_host(self, h: HostState) -> None:
        """Power loss: listeners closed, open connections reset."""
        with self._mutex:
            for s in self._listeners.pop(h.uuid, []):
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(s)
                s.close()
            conns = self._conns.pop(h.uuid, set())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(h.socket_path)
        for c in conns:
            with contextlib.suppress(OSError):
                # linger on, 0 s: the peer sees a reset, as when a host loses power
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.shutdown(socket.SHUT_RDWR)
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()
        self._thread.join(timeout=5)
        with self._mutex:
            for uuid, socks in list(self._listeners.items()):
                for s in socks:
                    s.close()
                del self._listeners[uuid]
            conns = [c for cs in self._conns.values() for c in cs]
            self._conns.clear()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _loop(self) -> None:
        while not self._closed:
            try:
                events = self._sel.select(timeout=0.5)
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            for key, _ in events:
                if key.data is None:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                h, channel = key.data
                try:
                    conn, addr = key.fileobj.accept()  # type: ignore[union-attr]
                except (BlockingIOError, OSError):
                    continue
                conn.setblocking(True)
                with self._mutex:
                    self._conns.setdefault(h.uuid, set()).add(conn)
                    if channel == "tcp":
                        self.accepted[h.uuid] = self.accepted.get(h.uuid, 0) + 1
                # The xapi that accepted it: a restart after this one it outlives (see
                # _Handler._restarted).
                epoch = h.epoch
                threading.Thread(target=self._serve, args=(conn, addr, h, channel, epoch),
                                 name=f"sim-{h.name}-{channel}", daemon=True).start()

    def _serve(self, conn: socket.socket, addr: Any, h: HostState, channel: str,
               epoch: int) -> None:
        stream = conn
        try:
            if self._tls is not None and channel == "tcp":
                # stunnel's part: TLS on the accepted connection, then plain HTTP to xapi. The
                # TLS socket works on a duplicate of the descriptor, so that crashes, resets
                # and the black hole's peek still act on the TCP socket itself.
                stream = self._tls.wrap_socket(conn.dup(), server_side=True,
                                               do_handshake_on_connect=False)
                stream.settimeout(FIRST_REQUEST_SECONDS)
                stream.do_handshake()
            handler = type("Handler", (_Handler,), {"sim": self, "sim_host": h,
                                                    "sim_channel": channel, "sim_raw": conn,
                                                    "sim_epoch": epoch})
            handler(stream, addr if channel == "tcp" else ("unix", 0), None)
        except Exception:  # a client that vanished mid-request is not our problem
            pass
        finally:
            with self._mutex:
                self._conns.get(h.uuid, set()).discard(conn)
            for s in {stream, conn}:
                with contextlib.suppress(OSError):
                    s.close()
