"""Opt-in Prometheus metrics (daemon.metrics_port, on daemon.metrics_address).

Scrapes are answered from prometheus_client's own thread; they read the status document
the loop publishes once per tick (`publish`) and the counters and histograms the loop
feeds (`count`, `observe`), under one lock, never the daemon's live objects.

Every series a dashboard or an alert rule keys on is present from the first scrape
(xenhad_incidents_open at 0 for every phase, the counters at 0), so `absent()` means the
daemon is gone and `== 0` means nothing is happening. Alert rules that use them:
packaging/prometheus/xenhad-rules.yml.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from xenhad import __version__
from xenhad.errors import XenhadError

HOST_STATES = ("up", "suspect", "down", "returning")
OPEN_PHASES = ("fencing", "waiting-fence", "resetting", "restarting")

DURATIONS: dict[str, tuple[str, tuple[float, ...]]] = {
    # name -> (help, bucket upper bounds in seconds)
    "detection": ("Seconds from a host's first missed tick to its confirmation as down",
                  (1, 2, 5, 10, 20, 30, 60, 120, 300)),
    "fencing": ("Seconds from an incident's opening to its host proven off",
                (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)),
    "recovery": ("Seconds from an incident's opening to its close",
                 (2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)),
    "vm_restart": ("Seconds from an incident's opening to one of its VMs running again",
                   (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)),
}

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    # name -> (help, label names)
    "fences": ("Fence attempts by backend and result (off, failed, host-back)",
               ("backend", "result")),
    "vm_restarts": ("VM outcomes in incidents (restarted, given_up, retry, no_room)",
                    ("result",)),
    "incidents_closed": ("Incidents closed by this daemon, by outcome (done, aborted)",
                         ("phase",)),
    "peer_contact_lost": ("Times mutual contact with a peer's daemon was lost", ("peer",)),
}


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        return [(_le(b), float(c)) for b, c in zip(self.bounds, self.counts)] + [
            ("+Inf", float(self.total))]


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{int(bound)}.0"


class Metrics(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._doc: Mapping[str, Any] = {}
        self._incidents_opened = 0
        self._histograms = {name: _Histogram(bounds) for name, (_, bounds) in DURATIONS.items()}
        self._counters: dict[str, dict[tuple[str, ...], float]] = {n: {} for n in COUNTERS}
        # Present at 0 from the start, so rate() and increase() see the first one.
        for result in ("restarted", "given_up", "retry", "no_room"):
            self._counters["vm_restarts"][(result,)] = 0
        for phase in ("done", "aborted"):
            self._counters["incidents_closed"][(phase,)] = 0

    def publish(self, doc: Mapping[str, Any]) -> None:
        with self._lock:
            self._doc = doc

    def incident_opened(self) -> None:
        with self._lock:
            self._incidents_opened += 1

    def observe(self, name: str, seconds: float) -> None:
        """One duration of DURATIONS' `name`."""
        with self._lock:
            self._histograms[name].observe(max(0.0, seconds))

    def count(self, name: str, *labels: str, n: float = 1) -> None:
        """Add `n` to COUNTERS' `name` with these label values."""
        with self._lock:
            series = self._counters[name]
            series[labels] = series.get(labels, 0) + n

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily
                                  | HistogramMetricFamily]:
        with self._lock:
            doc, opened = self._doc, self._incidents_opened
            histograms = {n: (h.buckets(), h.sum) for n, h in self._histograms.items()}
            counters = {n: dict(c) for n, c in self._counters.items()}

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"xenhad_{name}", text, value=value)

        info = GaugeMetricFamily("xenhad_build_info", "Always 1: the running xenhad version",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
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
        yield gauge("fencing_unsafe", "1 when fencing.mode is trust-liveness",
                    1 if doc.get("fencing_unsafe") else 0)
        absorb = doc.get("absorb")
        if isinstance(absorb, dict):
            can = GaugeMetricFamily(
                "xenhad_pool_can_absorb", "1 when every protected VM would find room if any "
                "`tolerate` hosts failed (the acting master's admission check)",
                labels=["tolerate"])
            can.add_metric([str(absorb.get("tolerate"))], 1 if absorb.get("ok") else 0)
            yield can
        states = GaugeMetricFamily("xenhad_host_state",
                                   "1 for each host's current state as this daemon sees it "
                                   "(its own host: up while the daemon runs)",
                                   labels=["host", "uuid", "state"])
        local = GaugeMetricFamily("xenhad_local_host", "1: the host this daemon runs on",
                                  labels=["host", "uuid"])
        for host in doc.get("hosts") or []:
            name, uuid = str(host.get("name")), str(host.get("uuid"))
            state = "up" if host.get("state") == "-" else host.get("state")
            for candidate in HOST_STATES:
                states.add_metric([name, uuid, candidate], 1 if state == candidate else 0)
            if host.get("peer") == "this host" or host.get("state") == "-":
                local.add_metric([name, uuid], 1)
        yield states
        yield local
        incidents = GaugeMetricFamily("xenhad_incidents_open", "Incidents in progress, by phase",
                                      labels=["phase"])
        phases = dict.fromkeys(OPEN_PHASES, 0)
        waiting_fence = GaugeMetricFamily(
            "xenhad_incident_waiting_fence", "1 for each host whose incident failed to fence it "
            "and has not fenced it since (retries included): none of its VMs is restarted "
            "until it is proven off", labels=["host"])
        for incident in doc.get("incidents") or []:
            phase = str(incident.get("phase"))
            phases[phase] = phases.get(phase, 0) + 1
            if incident.get("fence_failed"):
                waiting_fence.add_metric([str(incident.get("host"))], 1)
        for phase, number in sorted(phases.items()):
            incidents.add_metric([phase], number)
        yield incidents
        yield waiting_fence
        yield CounterMetricFamily("xenhad_incidents_opened",
                                  "Incidents this daemon opened since it started", value=opened)
        for name, (text, labels) in COUNTERS.items():
            family = CounterMetricFamily(f"xenhad_{name}", text, labels=list(labels))
            for values, added in sorted(counters[name].items()):
                family.add_metric(list(values), added)
            yield family
        for name, (buckets, total) in histograms.items():
            yield HistogramMetricFamily(f"xenhad_{name}_seconds", DURATIONS[name][0],
                                        buckets=buckets, sum_value=total)
        link = doc.get("heartbeats") or {}
        for key, text in (("sent", "Heartbeats sent"),
                          ("received", "Heartbeats accepted"),
                          ("bad", "Datagrams refused (bad MAC, wrong pool, replayed, garbled)"),
                          ("unlogged", "Refused datagrams not logged (rate limit)")):
            yield CounterMetricFamily(f"xenhad_heartbeats_{key}", text,
                                      value=float(link.get(key) or 0))
        posted = doc.get("messages") or {}
        xapi_messages = CounterMetricFamily(
            "xenhad_xapi_messages", "XAPI messages, by result (posted, dropped, suppressed by "
            "the repeat interval or the rate cap)", labels=["result"])
        for key in ("posted", "dropped", "suppressed"):
            xapi_messages.add_metric([key], float(posted.get(key) or 0))
        yield xapi_messages


def serve(metrics: Metrics, port: int, address: str = "127.0.0.1") -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise XenhadError(f"cannot serve metrics on {address}:{port}: {exc.strerror}; free "
                          "the port or change daemon.metrics_port or daemon.metrics_address"
                          ) from None
