"""Prometheus metrics on a local port (``[metrics]`` in the hub config).

Nothing here sits on a hot path. The bus, the poller, the store and the service
already keep their own counters (for ``lockerctl bus`` and ``status``), and this
collector reads them when Prometheus scrapes. The scrape runs on
prometheus-client's HTTP thread and only copies plain numbers and dicts. Reading
the store needs its thread, so the figures that come from the store (outbox depth,
age of the oldest event, open alarms) are refreshed by a task on the event loop
every few seconds (:func:`refresh`), and the scrape reads that snapshot.

Names follow Prometheus conventions: ``_total`` on counters, base units (seconds,
bytes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog
from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from lockerd.drivers.bus import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from lockerd.drivers.bus import Bus
    from lockerd.hub.monitor import DoorMonitor
    from lockerd.hub.service import HubService
    from lockerd.hub.store import Store
    from lockerd.ops.watchdog import Watchdog


class LinkFigures(Protocol):
    """What the metrics read of the cloud link."""

    @property
    def connected(self) -> asyncio.Event: ...

    @property
    def reconnects(self) -> int: ...

    @property
    def published(self) -> int: ...


class Hub(Protocol):
    """What the metrics read of a running hub (``lockerd.daemon.wiring.Hub`` is one);
    a protocol, so that this module needs nothing above it."""

    @property
    def buses(self) -> dict[str, Bus]: ...

    @property
    def monitor(self) -> DoorMonitor: ...

    @property
    def store(self) -> Store: ...

    @property
    def service(self) -> HubService: ...

    @property
    def cloud(self) -> LinkFigures | None: ...

    @property
    def watchdog(self) -> Watchdog | None: ...


log = structlog.get_logger(__name__)

REFRESH_S = 5.0


@dataclass
class StoreFigures:
    """What the store says, refreshed on the event loop (never read from the scrape)."""

    outbox_events: int = 0
    outbox_bytes: int = 0
    oldest_event_age_s: float = 0.0
    open_alarms: dict[str, int] = field(default_factory=dict)
    refreshed_at: float = 0.0


class HubCollector(Collector):
    """The Prometheus collector: reads the hub's own counters at each scrape."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.figures = StoreFigures()
        self.started_at = time.time()

    def collect(self) -> Iterable[Metric]:
        yield from self._buses()
        yield from self._service()
        yield from self._store()
        yield from self._cloud_and_watchdog()

    # ------------------------------------------------------------------ the buses
    def _buses(self) -> Iterator[Metric]:
        labels = ["bus", "board"]
        requests = CounterMetricFamily(
            "lockerd_bus_requests", "Requests sent to a board", labels=labels
        )
        replies = CounterMetricFamily(
            "lockerd_bus_replies", "Valid replies from a board", labels=labels
        )
        timeouts = CounterMetricFamily(
            "lockerd_bus_timeouts", "Requests a board did not answer in time", labels=labels
        )
        bad = CounterMetricFamily(
            "lockerd_bus_bad_frames",
            "Frames from a board that failed their checksum or shape",
            labels=labels,
        )
        refused = CounterMetricFamily(
            "lockerd_bus_refused_offline",
            "Reads not sent because the board is offline (probed less often)",
            labels=labels,
        )
        online = GaugeMetricFamily(
            "lockerd_board_online", "1 if the board answers, 0 if offline", labels=labels
        )
        latency = HistogramMetricFamily(
            "lockerd_bus_transaction_seconds",
            "Answered transactions: request written to reply matched (wire time included)",
            labels=labels,
        )
        port_open = GaugeMetricFamily(
            "lockerd_bus_port_open",
            "1 if the bus's serial port (or socket) is open",
            labels=["bus"],
        )
        port_losses = CounterMetricFamily(
            "lockerd_bus_port_losses", "Times the bus's port went away (unplugged)", labels=["bus"]
        )
        for name, bus in list(self.hub.buses.items()):
            port_open.add_metric([name], 1.0 if bus.is_open else 0.0)
            port_losses.add_metric([name], bus.counters.port_losses)
            for h in list(bus.health.values()):
                key = [name, h.board]
                requests.add_metric(key, h.requests)
                replies.add_metric(key, h.replies)
                timeouts.add_metric(key, h.timeouts)
                bad.add_metric(key, h.bad_frames)
                refused.add_metric(key, h.refused_offline)
                online.add_metric(key, 1.0 if h.online else 0.0)
                counts, running = list(h.latency_counts), 0
                buckets = []
                for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), counts, strict=True):
                    running += n
                    buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
                latency.add_metric(key, buckets, h.latency_sum_s)
        yield from (requests, replies, timeouts, bad, refused, online, latency)
        yield from (port_open, port_losses)
        cycles = CounterMetricFamily("lockerd_poll_cycles", "Poll cycles completed", labels=["bus"])
        overruns = CounterMetricFamily(
            "lockerd_poll_overruns",
            "Poll cycles that took longer than the interval",
            labels=["bus"],
        )
        last = GaugeMetricFamily(
            "lockerd_poll_cycle_seconds", "Duration of the last poll cycle", labels=["bus"]
        )
        worst = GaugeMetricFamily(
            "lockerd_poll_cycle_max_seconds", "Longest poll cycle since start", labels=["bus"]
        )
        for poller in self.hub.monitor.pollers:
            if not poller.boards:
                continue
            on = [poller.boards[0].bus.name]
            cycles.add_metric(on, poller.stats.cycles)
            overruns.add_metric(on, poller.stats.overruns)
            last.add_metric(on, poller.stats.last_cycle_s)
            worst.add_metric(on, poller.stats.max_cycle_s)
        yield from (cycles, overruns, last, worst)

    # ------------------------------------------------------------------ the service
    def _service(self) -> Iterator[Metric]:
        store, service = self.hub.store, self.hub.service
        events = CounterMetricFamily(
            "lockerd_events",
            "Domain events committed, by type (door_opened, door_shut, forced_open, "
            "left_open, deposited, collected, board_offline, ...)",
            labels=["type"],
        )
        for type_, n in sorted(dict(store.committed_events).items()):
            events.add_metric([type_], n)
        outcomes = CounterMetricFamily(
            "lockerd_open_outcomes",
            "Opens that reached an outcome (opened, already_open, jammed, not_sent, ...)",
            labels=["outcome"],
        )
        for outcome, n in sorted(dict(store.open_outcomes).items()):
            outcomes.add_metric([outcome], n)
        wrong = CounterMetricFamily(
            "lockerd_wrong_codes", "Wrong codes entered, by terminal", labels=["terminal"]
        )
        for terminal, n in sorted(dict(service.wrong_codes).items()):
            wrong.add_metric([terminal], n)
        started = GaugeMetricFamily(
            "lockerd_start_time_seconds", "When this lockerd process started (Unix time)"
        )
        started.add_metric([], self.started_at)
        yield from (events, outcomes, wrong, started)

    def _store(self) -> Iterator[Metric]:
        f = self.figures
        depth = GaugeMetricFamily("lockerd_outbox_events", "Events waiting for the cloud")
        depth.add_metric([], f.outbox_events)
        size = GaugeMetricFamily("lockerd_outbox_bytes", "Size of the events waiting")
        size.add_metric([], f.outbox_bytes)
        age = GaugeMetricFamily(
            "lockerd_outbox_oldest_event_age_seconds",
            "Age of the oldest event waiting for the cloud (0 when none waits)",
        )
        age.add_metric([], f.oldest_event_age_s)
        alarms = GaugeMetricFamily(
            "lockerd_alarms_open", "Alarms raised and not acknowledged, by type", labels=["type"]
        )
        for type_, n in sorted(f.open_alarms.items()):
            alarms.add_metric([type_], n)
        refreshed = GaugeMetricFamily(
            "lockerd_store_figures_refreshed_seconds",
            "When the outbox and alarm figures were last read from the store (Unix time)",
        )
        refreshed.add_metric([], f.refreshed_at)
        commit = GaugeMetricFamily(
            "lockerd_store_last_commit_seconds",
            "Duration of the store's last COMMIT (WAL write and flush)",
        )
        commit.add_metric([], self.hub.store.last_commit_s)
        yield from (depth, size, age, alarms, refreshed, commit)

    def _cloud_and_watchdog(self) -> Iterator[Metric]:
        cloud = self.hub.cloud
        if cloud is not None:
            connected = GaugeMetricFamily(
                "lockerd_mqtt_connected", "1 while the cloud link is connected"
            )
            connected.add_metric([], 1.0 if cloud.connected.is_set() else 0.0)
            connects = CounterMetricFamily(
                "lockerd_mqtt_connects", "Connections made to the broker (reconnects + 1)"
            )
            connects.add_metric([], cloud.reconnects)
            published = CounterMetricFamily(
                "lockerd_mqtt_events_published", "Outbox events acknowledged by the broker"
            )
            published.add_metric([], cloud.published)
            yield from (connected, connects, published)
        watchdog = self.hub.watchdog
        if watchdog is not None:
            healthy = GaugeMetricFamily(
                "lockerd_watchdog_healthy",
                "1 while the watchdog finds the hub healthy (and pings systemd)",
            )
            healthy.add_metric([], 0.0 if watchdog.problems else 1.0)
            yield healthy


async def refresh(hub: Hub, collector: HubCollector) -> None:
    """Read the store's figures on the event loop (its own thread), every REFRESH_S."""
    service, store = hub.service, hub.store
    while True:
        count, size = await service.run_db(store.outbox_size)
        oldest = await service.run_db(store.oldest_event_at)
        open_alarms: dict[str, int] = {}
        for alarm in await service.alarms():
            type_ = str(alarm["type"])
            open_alarms[type_] = open_alarms.get(type_, 0) + 1
        now = time.time()
        collector.figures = StoreFigures(
            outbox_events=count,
            outbox_bytes=size,
            oldest_event_age_s=max(0.0, now - oldest) if oldest else 0.0,
            open_alarms=open_alarms,
            refreshed_at=now,
        )
        await asyncio.sleep(REFRESH_S)


def serve_metrics(hub: Hub, address: str, port: int) -> tuple[WSGIServer, HubCollector]:
    """Start the scrape endpoint (prometheus-client's HTTP thread) on ``address:port``
    (port 0: any free port; the log line says which)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = HubCollector(hub)
    registry.register(collector)
    server, _thread = start_http_server(port, address, registry=registry)
    log.info("metrics_listening", address=address, port=server.server_port)
    return server, collector
