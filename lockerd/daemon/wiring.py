"""The one wiring of a hub: config → store, buses, boards → service, door monitor, local
API, cloud link. :func:`open_hub` is used by ``lockerd run``, the demo, the tests and the
benchmarks alike; where the buses' ports come from is the caller's
(:mod:`lockerd.daemon.ports`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from lockerd.api.server import ApiServer
from lockerd.config import HubConfig
from lockerd.daemon.ports import ConfiguredPorts, Ports
from lockerd.drivers.boards import Board, DoorReading, make_board
from lockerd.drivers.bus import Bus
from lockerd.drivers.poll import BusPoller
from lockerd.hub import domain as d
from lockerd.hub.codes import CodeHasher, load_key
from lockerd.hub.diskreserve import DiskReserve
from lockerd.hub.monitor import DoorMonitor
from lockerd.hub.service import Door, HubService
from lockerd.hub.store import Store
from lockerd.hub.storethread import StoreThread
from lockerd.ops.instance import StateLock, claim_socket

if TYPE_CHECKING:
    from lockerd.cloud.link import CloudLink
    from lockerd.ops.watchdog import Watchdog

log = structlog.get_logger(__name__)

OPEN_WAIT_S = 5.0  # how long the start waits for the buses' ports (all at once)


@dataclass
class Hub:
    """A hub, opened: what :func:`lockerd.daemon.serve.serve` runs and what a test or a
    benchmark drives. Built by :func:`open_hub` only."""

    cfg: HubConfig
    store: Store
    service: HubService
    buses: dict[str, Bus]
    boards: dict[tuple[str, int], Board[Any]]
    monitor: DoorMonitor
    api: ApiServer
    ports: Ports
    cloud: CloudLink | None = None
    watchdog: Watchdog | None = None  # set while serve() runs


def _open_store(cfg: HubConfig) -> tuple[CodeHasher, Store]:
    """The code key and the store, its compartments matched to the config."""
    hasher = CodeHasher(load_key(cfg.key_path()))
    store = Store(Path(cfg.paths.state_dir) / "lockerd.db")
    try:
        store.sync_compartments(
            d.Compartment(c.label, d.Size(c.size), c.accessible) for c in cfg.compartments
        )
    except BaseException:
        store.close()
        raise
    return hasher, store


def _settle_heap() -> None:
    """What start-up built lives as long as the daemon: out of the collector's way, so a
    full collection never pauses the loop for long (measured: 13-18 ms -> about 0)."""
    gc.collect()
    gc.freeze()


async def _first_readings(pollers: list[BusPoller], service: HubService) -> dict[str, bool]:
    """Every door's state from one poll of every board (for start-up reconciliation)."""
    doors: dict[str, bool] = {}

    def take(reading: DoorReading) -> None:
        for i, is_open in enumerate(reading.doors_open):
            label = service.label_of(reading.board, i + 1)
            if label is not None:
                doors[label] = is_open

    for poller in pollers:
        poller.set_consumers(take)
        await poller.poll_once()
    return doors


@contextlib.asynccontextmanager
async def open_hub(
    cfg: HubConfig,
    *,
    ports: Ports | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Hub]:
    """Everything a hub needs, started; closed in reverse on the way out.

    ``ports`` says where each bus is (default: the config's ports); ``clock`` is the
    service's wall clock (default ``time.time``; a test may drive its own)."""
    ports = ports or ConfiguredPorts()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(_only_daemon(cfg).release)
        where = await ports.open(cfg, stack)
        hasher, store = _open_store(cfg)
        stack.callback(store.close)
        buses: dict[str, Bus] = {}
        boards: dict[tuple[str, int], Board[Any]] = {}
        pollers: list[BusPoller] = []
        for bus_cfg in cfg.buses:
            settings = bus_cfg.model_copy(update={"port": where[bus_cfg.name]})
            buses[bus_cfg.name] = await stack.enter_async_context(Bus(settings, name=bus_cfg.name))
        # every bus opens in the background at once: a missing adapter costs the start
        # one wait, not one per bus
        opened = await asyncio.gather(*(bus.wait_open(OPEN_WAIT_S) for bus in buses.values()))
        for bus, is_open in zip(buses.values(), opened, strict=True):
            if not is_open:
                log.error("bus_not_open_at_start", bus=bus.name, port=bus.settings.port)
        for bus_cfg in cfg.buses:
            bus = buses[bus_cfg.name]
            bus_boards = [make_board(bus, b) for b in bus_cfg.boards]
            for board in bus_boards:
                boards[(bus_cfg.name, board.settings.address)] = board
            pollers.append(
                BusPoller(
                    bus_boards, interval_s=cfg.timers.poll_interval_s, on_reading=lambda r: None
                )
            )
        service = _service(cfg, store, hasher, boards, clock)
        stack.callback(service.close)
        await service.reconcile(await _first_readings(pollers, service))
        cloud = None
        if cfg.cloud is not None:
            from lockerd.cloud.link import CloudLink  # noqa: PLC0415 - aiomqtt only when used

            cloud = CloudLink(
                cfg.cloud,
                cfg.hub_id,
                service,
                state_dir=Path(cfg.paths.state_dir),
                default_collect_window_s=cfg.timers.pickup_window_h * 3600,
            )
            await cloud.settle_unfinished()
        monitor = DoorMonitor(service, pollers, debounce_reads=cfg.timers.debounce_reads)
        api = _api(cfg, service, buses, cloud, ports)
        await api.start()
        stack.push_async_callback(api.close)
        _settle_heap()
        yield Hub(cfg, store, service, buses, boards, monitor, api, ports, cloud)


def _api(
    cfg: HubConfig,
    service: HubService,
    buses: dict[str, Bus],
    cloud: CloudLink | None,
    ports: Ports,
) -> ApiServer:
    """The local API: the technician's socket and each terminal's."""

    async def bus_health() -> Any:
        return [bus.snapshot() for bus in buses.values()]

    extra: dict[str, Any] = {"bus": bus_health}
    if cloud is not None:
        extra["cloud"] = cloud.health
    api = ApiServer(
        service,
        cfg.paths.socket,
        group=cfg.paths.technician_group,
        terminals=cfg.terminals,
        limits=cfg.api,
        extra=extra,
        code_length=cfg.codes.length,
        pickup_window_h=cfg.timers.pickup_window_h,
    )
    stage = ports.stage
    if stage is not None:
        api.sim_door = stage.door
        api.sim_bus = stage.bus
    return api


def _service(
    cfg: HubConfig,
    store: Store,
    hasher: CodeHasher,
    boards: dict[tuple[str, int], Board[Any]],
    clock: Callable[[], float] | None,
) -> HubService:
    """The service over the store and the doors, its store thread with the disk
    reserve (no room even for the reserve: no new reservations)."""
    doors = [Door(c.label, boards[(c.bus, c.board)], c.channel) for c in cfg.compartments]
    reserve = DiskReserve(
        Path(cfg.paths.state_dir) / "disk-reserve", int(cfg.paths.disk_reserve_mb * 2**20)
    )
    return HubService(
        store,
        hasher,
        doors,
        throttle=cfg.codes.throttle,
        open_confirm_s=cfg.timers.open_confirm_s,
        left_open_alarm_s=cfg.timers.left_open_alarm_s,
        fallback_to_larger=cfg.codes.fallback_to_larger,
        store_thread=StoreThread(store, disk_reserve=reserve),
        **({"clock": clock} if clock is not None else {}),
    )


def _only_daemon(cfg: HubConfig) -> StateLock:
    """The state directory's lock, and no API socket another process answers on: taken
    before anything is opened (a second daemon on the same ports, store and client id
    would break both). Raises :class:`AlreadyRunning`."""
    lock = StateLock(cfg.paths.state_dir)
    lock.acquire()
    try:
        for path in [cfg.paths.socket, *(t.socket for t in cfg.terminals)]:
            claim_socket(path)
    except BaseException:
        lock.release()
        raise
    return lock
