"""The control HTTP API and `xenhad sim` as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
import XenAPI

from xenhad.sim import SimPool

from .clients import failure

pytestmark = pytest.mark.timeout(60)


def call(url: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_control_api_mirrors_the_python_methods(pool: SimPool) -> None:
    url = pool.info()["control_url"]
    assert call(url, "/crash", {"host": "host2"}) == (200, {"ok": True})
    assert call(url, "/truth")[1]["hosts"]["host2"]["powered"] is False
    assert call(url, "/boot", {"host": "host2"})[0] == 200
    assert call(url, "/advance", {"seconds": pool.spec.boot_seconds + 1})[0] == 200
    assert call(url, "/truth")[1]["hosts"]["host2"]["xapi"] == "up"
    assert call(url, "/partition", {"groups": [["host1"], ["host2", "host3"]]})[0] == 200
    assert call(url, "/truth")[1]["network"]["partition"] == [["host1"], ["host2", "host3"]]
    assert call(url, "/cut", {"src": "host3", "dst": "host1"})[0] == 200
    assert call(url, "/heal", {})[0] == 200
    assert call(url, "/hang", {"host": "host3"})[0] == 200
    assert call(url, "/unhang", {"host": "host3"})[0] == 200
    assert call(url, "/latency", {"host": "host1", "seconds": 0.01})[0] == 200
    assert call(url, "/error", {"host": "host1", "method": "pool.get_all",
                                "code": "INTERNAL_ERROR", "params": ["x"]})[0] == 200
    s = XenAPI.Session(pool.url("host1"))
    s.login_with_password("root", pool.spec.root_password)
    with pytest.raises(XenAPI.Failure) as e:
        s.xenapi.pool.get_all()
    assert failure(e) == ["INTERNAL_ERROR", "x"]
    assert call(url, "/clear", {})[0] == 200
    assert call(url, "/watchdog", {"host": "host3", "op": "arm", "timeout": 10})[0] == 200
    assert call(url, "/watchdog", {"host": "host3", "op": "keepalive"})[0] == 200
    assert call(url, "/watchdog", {"host": "host3", "op": "disarm"})[0] == 200
    assert call(url, "/shutdown", {"host": "host3"})[0] == 200
    info = call(url, "/info")[1]
    assert info == pool.info()
    assert call(url, "/double_runs")[1] == []


@pytest.mark.parametrize("path,body,words", [
    ("/crash", {}, "missing field 'host'"),
    ("/crash", {"host": "host9"}, "unknown host 'host9'"),
    ("/watchdog", {"host": "host1", "op": "poke"}, "op 'poke'"),
    ("/advance", {"seconds": "soon"}, "wrong type"),
    ("/nothing", {}, "no such endpoint"),
])
def test_control_api_bad_requests_get_one_line(pool: SimPool, path: str,
                                               body: dict[str, Any], words: str) -> None:
    status, reply = call(pool.info()["control_url"], path, body)
    assert status in (400, 404)
    assert words in reply["error"] and "\n" not in reply["error"]


def test_cli_prints_one_json_line_and_stops_on_sigterm(tmp_path: Any) -> None:
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xenhad.sim", "--hosts", "2", "--vms", "3", "--seed", "4",
         "--base-dir", str(tmp_path / "sim")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert [h["name"] for h in info["hosts"]] == ["host1", "host2"]
        assert info["master"] == info["hosts"][0]["uuid"]
        assert info["root_password"] and info["control_url"].startswith("http://127.0.0.1:")
        s = XenAPI.Session(info["hosts"][0]["url"])
        s.login_with_password("root", info["root_password"])
        assert len(s.xenapi.host.get_all()) == 2
        assert os.path.exists(info["hosts"][1]["socket"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_bad_arguments_exit_2_with_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "xenhad.sim", "--hosts", "0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "hosts=0" in r.stderr
    r = subprocess.run([sys.executable, "-m", "xenhad.sim", "--hosts", "many"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
