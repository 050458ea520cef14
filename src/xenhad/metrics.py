"""Opt-in Prometheus metrics (daemon.metrics_port), on a localhost port.

Scrapes are answered from prometheus_client's own thread; they read the status document
the loop publishes once per tick (`publish`), never the daemon's live objects.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from xenhad.errors import XenhadError

HOST_STATES = ("up", "suspect", "down", "returning")


class Metrics(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._doc: Mapping[str, Any] = {}
        self._incidents_opened = 0

    def publish(self, doc: Mapping[str, Any]) -> None:
        with self._lock:
            self._doc = doc

    def incident_opened(self) -> None:
        with self._lock:
            self._incidents_opened += 1

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            doc, opened = self._doc, self._incidents_opened

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"xenhad_{name}", text, value=value)

        yield gauge("up", "1 while the daemon's loop publishes its view", 1 if doc else 0)
        yield gauge("quorate", "1 when this node is in contact with a majority of the pool",
                    1 if doc.get("quorate") else 0)
        yield gauge("master", "1 when this host is the pool master",
                    1 if doc.get("role") == "master" else 0)
        yield gauge("xapi_reachable", "1 when the last tick read the pool through XAPI",
                    0 if doc.get("xapi_error") else 1)
        yield gauge("passive", "1 when xenhad stays passive (see xenhad status)",
                    1 if doc.get("passive") else 0)
        yield gauge("journal_writable", "0 while the journal of incidents cannot be written: "
                    "no incident opens or takes a step", 0 if doc.get("journal_error") else 1)
        yield gauge("watchdog_armed", "1 while this daemon holds an armed watchdog",
                    1 if doc.get("watchdog_armed") else 0)
        states = GaugeMetricFamily("xenhad_host_state",
                                   "1 for each host's current detector state",
                                   labels=["host", "state"])
        for host in doc.get("hosts") or []:
            for state in HOST_STATES:
                states.add_metric([str(host.get("name")), state],
                                  1 if host.get("state") == state else 0)
        yield states
        incidents = GaugeMetricFamily("xenhad_incidents_open", "Incidents in progress",
                                      labels=["phase"])
        phases: dict[str, int] = {}
        for incident in doc.get("incidents") or []:
            phase = str(incident.get("phase"))
            phases[phase] = phases.get(phase, 0) + 1
        for phase, count in sorted(phases.items()):
            incidents.add_metric([phase], count)
        yield incidents
        yield CounterMetricFamily("xenhad_incidents_opened",
                                  "Incidents this daemon opened since it started", value=opened)


def serve(metrics: Metrics, port: int, address: str = "127.0.0.1") -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise XenhadError(f"cannot serve metrics on {address}:{port}: {exc.strerror}; free "
                          "the port or change daemon.metrics_port") from None
