"""Serving an opened hub until it is told to stop: the door monitor, the tick for
time-driven rules and retention, the cloud link, the watchdog and the metrics, and the
drain that lets every open under way reach its outcome before the tasks end.

``lockerd run --config FILE`` is :func:`run_hub`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from lockerd.daemon.ports import Ports
from lockerd.daemon.wiring import Hub, open_hub
from lockerd.logs import bind
from lockerd.ops.sdnotify import Notifier
from lockerd.ops.watchdog import Watchdog

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from lockerd.config import HubConfig

STOP_GRACE_S = 10.0  # a stop waits this long for the monitor, the tick and the cloud link
PRUNE_FIRST_S = 60.0  # the store's retention: first pruned a minute after the start,
PRUNE_EVERY_S = 3600.0  # then once an hour

log = structlog.get_logger(__name__)


def _where(task: asyncio.Task[Any]) -> str:
    """Where a task is waiting, outermost coroutine first (for a stuck stop's log)."""
    out = []
    coro: Any = task.get_coro()
    while coro is not None:  # follow the awaits down, into library coroutines too
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        name = frame.f_code.co_filename.rsplit("/", 2)[-1]
        out.append(f"{name}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " -> ".join(out)


async def serve(
    hub: Hub, ready: Callable[[], None] | None = None, notifier: Notifier | None = None
) -> int:
    """Run until SIGINT/SIGTERM: the door monitor, a tick for time-driven rules, the
    cloud link and the watchdog. ``ready`` is called once the signals are handled;
    systemd (``notifier``) is told READY then (the store is open and every bus was
    polled once by :func:`open_hub`), and STOPPING when a stop begins.

    A stop drains: no new open starts (the API stops accepting, the keypad and the
    technician are told to retry, the cloud link stops taking commands), every open
    under way reaches its outcome with the door monitor still running, and only
    then do the tasks end.

    Returns the exit status: 0 after a stop that was asked for (a signal), 1 when a
    task ended on its own. Every task runs for as long as the hub does, so one that
    ends is a fault: the hub drains and exits non-zero, and systemd starts it again."""
    notifier = notifier or Notifier({})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready()
    notifier.ready(f"serving {len(hub.cfg.compartments)} compartments")

    async def ticker() -> None:
        next_prune = loop.time() + PRUNE_FIRST_S
        while True:
            await hub.service.tick()
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_EVERY_S
                await hub.service.prune(hub.cfg.retention, outbox=hub.cloud is None)
            await asyncio.sleep(1.0)

    watchdog = Watchdog(
        notifier,
        hub.buses,
        lambda now: hub.service.run_db(hub.store.probe_write, now),
        bus_stale_s=hub.cfg.timers.bus_stale_s,
    )
    hub.watchdog = watchdog
    hub.api.extra["watchdog"] = watchdog.snapshot
    tasks = [
        asyncio.create_task(hub.monitor.run(), name="monitor"),
        asyncio.create_task(ticker(), name="ticker"),
        asyncio.create_task(watchdog.run(), name="watchdog"),
    ]
    if hub.cloud is not None:
        tasks.append(asyncio.create_task(hub.cloud.run(), name="cloud link"))
    metrics_server = _start_metrics(hub, tasks)
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    notifier.stopping("draining: opens under way finish, then lockerd stops")
    status = 0
    if waiter in done:
        log.info("lockerd_draining")
    else:
        status = 1
        ended = next(t for t in done if t is not waiter)
        error = None if ended.cancelled() else ended.exception()
        log.error(
            "task_ended",
            task=ended.get_name(),
            error=repr(error),
            exc_info=error,
            hint="a part of lockerd that runs for as long as the hub stopped on its own: "
            "lockerd drains and exits with status 1, and systemd starts it again",
        )
    if hub.cloud is not None:
        hub.cloud.close()
    hub.api.stop_accepting()
    if not await hub.service.drain(hub.cfg.timers.open_confirm_s + 2.0):
        log.error(
            "drain_incomplete",
            hint="an open did not reach its outcome in time; the next start reconciles "
            "its intent from the door",
        )
    for t in [waiter, *tasks]:
        t.cancel()
    _, stuck = await asyncio.wait([waiter, *tasks], timeout=STOP_GRACE_S)
    if stuck:  # never hang a stop: the service manager would have to kill us
        log.error(
            "stop_incomplete",
            tasks=sorted(t.get_name() for t in stuck),
            where=[
                f"{t.get_name()}: {_where(t)}"
                for t in asyncio.all_tasks()
                if t is not asyncio.current_task()
            ],
            hint="these did not end within the grace period; exiting anyway",
        )
    if metrics_server is not None:
        await asyncio.to_thread(metrics_server.shutdown)  # its loop wakes every 0.5 s
        metrics_server.server_close()
    log.info("lockerd_stopping", status=status)
    return status


def _start_metrics(hub: Hub, tasks: list[asyncio.Task[Any]]) -> WSGIServer | None:
    """The Prometheus endpoint, if configured, and its refresh task (added to ``tasks``)."""
    if hub.cfg.metrics is None:
        return None
    from lockerd.ops.metrics import refresh, serve_metrics  # noqa: PLC0415 - only when used

    try:
        server, collector = serve_metrics(hub, hub.cfg.metrics.address, hub.cfg.metrics.port)
    except OSError as exc:  # a taken port must not keep the hub from serving
        log.error(  # noqa: TRY400 - a known condition, not a traceback
            "metrics_not_served",
            address=hub.cfg.metrics.address,
            port=hub.cfg.metrics.port,
            error=str(exc),
            hint="another process holds the metrics port: change [metrics] port",
        )
        return None
    tasks.append(asyncio.create_task(refresh(hub, collector), name="metrics"))
    return server


async def run_hub(cfg: HubConfig, ports: Ports | None = None) -> int:
    """``lockerd run``: open the hub on its ports (the config's, unless given) and serve
    it, telling systemd how it goes. Returns the exit status."""
    bind(hub=cfg.hub_id)  # on every line from here, ours and the libraries'
    async with open_hub(cfg, ports=ports) as hub:
        log.info("lockerd_ready", compartments=len(cfg.compartments))
        notifier = Notifier()
        try:
            return await serve(hub, notifier=notifier)
        finally:
            notifier.close()
