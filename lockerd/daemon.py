"""Running a hub: config → store, buses, boards → service, door monitor, local API.

``lockerd run --config FILE`` runs a hub on its real buses. ``lockerd demo`` runs
the demo hub (config/demo-hub.toml) with every bus served by an in-process
simulator on a real pty, and creates sample reservations on a fresh hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.boards import Board, DoorReading, make_board
from drivers.bus import Bus
from drivers.poll import BusPoller
from drivers.settings import ModbusRelaySettings
from lockerd import domain as d
from lockerd.api import ApiServer
from lockerd.codes import CodeHasher, create_key, load_key, new_code
from lockerd.config import Cloud, HubConfig, load
from lockerd.diskreserve import DiskReserve
from lockerd.instance import StateLock, claim_socket
from lockerd.logs import bind
from lockerd.monitor import DoorMonitor
from lockerd.sdnotify import Notifier
from lockerd.service import Door, HubService
from lockerd.store import Store
from lockerd.watchdog import Watchdog
from simulator.boards import BOARD_TYPES, SimBoard, SimCu16
from simulator.line import Simulator

STOP_GRACE_S = 10.0  # a stop waits this long for the monitor, the tick and the cloud link
PRUNE_FIRST_S = 60.0  # the store's retention: first pruned a minute after the start,
PRUNE_EVERY_S = 3600.0  # then once an hour

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from lockerd.cloud import CloudLink

log = structlog.get_logger("lockerd.daemon")

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo-hub.toml"
DEMO_TERMINAL = "keypad:1"  # the demo's keypad, on its terminal socket


@dataclass
class Hub:
    cfg: HubConfig
    store: Store
    service: HubService
    buses: dict[str, Bus]
    boards: dict[tuple[str, int], Board[Any]]
    monitor: DoorMonitor
    api: ApiServer
    sims: dict[str, Simulator] = field(default_factory=dict)
    cloud: CloudLink | None = None
    watchdog: Watchdog | None = None  # set while serve() runs


def _open_store(cfg: HubConfig, *, simulate: bool) -> tuple[CodeHasher, Store]:
    """The state directory, the code key (made for a simulated hub) and the store, its
    compartments matched to the config."""
    state = Path(cfg.paths.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = cfg.key_path()
    if simulate and not key_path.exists():
        create_key(key_path)
    hasher = CodeHasher(load_key(key_path))
    store = Store(state / "lockerd.db")
    try:
        store.sync_compartments(
            d.Compartment(c.label, d.Size(c.size), c.accessible) for c in cfg.compartments
        )
    except BaseException:
        store.close()
        raise
    return hasher, store


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


def _settle_heap() -> None:
    """What start-up built lives as long as the daemon: out of the collector's way, so a
    full collection never pauses the loop for long (measured: 13-18 ms -> about 0)."""
    gc.collect()
    gc.freeze()


def demo_command_keys(public: Path) -> Path:
    """The demo plays the cloud too: an Ed25519 key pair for signed commands (the
    private key next to the public one, for ``lockerctl cloud``). Real hubs get only
    the cloud's public key."""
    private = public.with_suffix(".key")
    if not public.exists():
        key = Ed25519PrivateKey.generate()
        public.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        private.chmod(0o600)
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return private


def _sim_board(settings: Any) -> SimBoard:
    """The simulated board that answers like the configured one, register map included."""
    extra: dict[str, Any] = {}
    if isinstance(settings, ModbusRelaySettings):
        extra = {
            "coil_base": settings.coil_base,
            "input_base": settings.input_base,
            "flash_base": settings.flash_base,
        }
    return BOARD_TYPES[settings.kind](
        settings.address,
        settings.channels,
        door_open_bit=settings.door_open_bit,
        spring_delay_s=0.3,
        **extra,
    )


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
async def open_hub(cfg: HubConfig, *, simulate: bool = False) -> AsyncIterator[Hub]:
    """Everything a hub needs, started; closed in reverse on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        state = Path(cfg.paths.state_dir)
        stack.callback(_only_daemon(cfg).release)
        hasher, store = _open_store(cfg, simulate=simulate)
        stack.callback(store.close)
        sims: dict[str, Simulator] = {}
        buses: dict[str, Bus] = {}
        boards: dict[tuple[str, int], Board[Any]] = {}
        pollers: list[BusPoller] = []
        for bus_cfg in cfg.buses:
            settings = bus_cfg
            if simulate:
                sim = Simulator([_sim_board(b) for b in bus_cfg.boards], baudrate=bus_cfg.baudrate)
                await stack.enter_async_context(sim)
                sims[bus_cfg.name] = sim
                settings = bus_cfg.model_copy(update={"port": sim.url})
            bus = Bus(settings, name=bus_cfg.name)
            await stack.enter_async_context(bus)
            if not await bus.wait_open(5):
                log.error("bus_not_open_at_start", bus=bus_cfg.name, port=settings.port)
            buses[bus_cfg.name] = bus
            bus_boards = [make_board(bus, b) for b in bus_cfg.boards]
            for board in bus_boards:
                boards[(bus_cfg.name, board.settings.address)] = board
            pollers.append(
                BusPoller(
                    bus_boards, interval_s=cfg.timers.poll_interval_s, on_reading=lambda r: None
                )
            )
        service = _service(cfg, store, hasher, boards)
        stack.callback(service.close)
        await service.reconcile(await _first_readings(pollers, service))
        cloud = None
        if cfg.cloud is not None:
            if simulate:
                demo_command_keys(cfg.state_path(cfg.cloud.command_key_file))
            from lockerd.cloud import CloudLink  # noqa: PLC0415 - aiomqtt only when used

            cloud = CloudLink(cfg.cloud, cfg.hub_id, service, state_dir=state)
            await cloud.settle_unfinished()
        monitor = DoorMonitor(service, pollers, debounce_reads=cfg.timers.debounce_reads)

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
        )
        if simulate:
            api.sim_door = _sim_door(cfg, sims)
            api.sim_bus = _sim_bus(sims)
        await api.start()
        stack.push_async_callback(api.close)
        _settle_heap()
        yield Hub(cfg, store, service, buses, boards, monitor, api, sims, cloud)


def _service(
    cfg: HubConfig, store: Store, hasher: CodeHasher, boards: dict[tuple[str, int], Board[Any]]
) -> HubService:
    """The service over the store and the doors, with its disk reserve."""
    doors = [Door(c.label, boards[(c.bus, c.board)], c.channel) for c in cfg.compartments]
    service = HubService(
        store,
        hasher,
        doors,
        throttle=cfg.codes.throttle,
        open_confirm_s=cfg.timers.open_confirm_s,
        left_open_alarm_s=cfg.timers.left_open_alarm_s,
        fallback_to_larger=cfg.codes.fallback_to_larger,
    )
    service.disk_reserve = DiskReserve(
        Path(cfg.paths.state_dir) / "disk-reserve", int(cfg.paths.disk_reserve_mb * 2**20)
    )
    if not service.disk_reserve.ensure():
        service.disk_low = True  # no room even for the reserve: no new reservations
    return service


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


def _sim_bus(sims: dict[str, Simulator]) -> Any:
    def bus(name: str, action: str) -> str:
        if name not in sims:
            raise KeyError(f"no bus {name}")
        for board in sims[name].line.boards:
            board.faults.dead = action == "dead"
        if action == "dead":
            return f"every board on bus {name} lost its power"
        return f"every board on bus {name} has its power back"

    return bus


def _sim_door(cfg: HubConfig, sims: dict[str, Simulator]) -> Any:
    where = {c.label: (c.bus, c.board, c.channel) for c in cfg.compartments}

    def door(label: str, action: str) -> str:
        if label not in where:
            raise KeyError(f"no compartment {label}")
        bus, address, channel = where[label]
        board = sims[bus].board(address)
        if action == "open":
            board.open_door(channel)
            return f"a person opens {label}"
        if action == "close":
            board.close_door(channel)
            return f"a person shuts {label}"
        if action in ("put", "take"):
            if not isinstance(board, SimCu16):
                raise KeyError(f"{label} has no occupancy sensor")
            board.put_parcel(channel, action == "put")
            return (
                f"a person {'puts something in' if action == 'put' else 'takes it out of'} {label}"
            )
        if action == "jam":
            board.faults.jammed.add(channel)
            return f"the lock of {label} is jammed: a pulse will not open it"
        board.faults.jammed.discard(channel)
        return f"the lock of {label} works again"

    return door


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
    from lockerd.metrics import refresh, serve_metrics  # noqa: PLC0415 - only when used

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


def reserve_sample(
    hub: Hub, pid: str, size: d.Size, *, kind: d.Kind = d.Kind.DELIVERY, actor: str = "demo"
) -> tuple[str, str]:
    """A reservation with two new codes (deposit, pickup), stored as hashes only; the
    codes are returned once, for the demo to print (or a benchmark to enter)."""
    now = hub.service.clock()
    hasher = hub.service.hasher
    deposit, pickup = new_code(hub.cfg.codes.length), new_code(hub.cfg.codes.length)
    parcel = d.Parcel(
        pid,
        kind,
        size,
        deposit_from=now - 60,
        deposit_until=now + 7 * 86_400,
        collect_window_s=hub.cfg.timers.pickup_window_h * 3600,
    )
    hub.store.add_parcel(
        parcel,
        {d.Purpose.DEPOSIT: hasher.hash(deposit), d.Purpose.COLLECT: hasher.hash(pickup)},
        now=now,
        actor=actor,
        events=[
            d.Event("parcel_reserved", {"parcel": pid, "size": size.value, "kind": kind.value})
        ],
    )
    return deposit, pickup


def sample_reservations(hub: Hub, say: Any) -> None:
    """A fresh demo hub gets three deliveries and a return to play with."""
    if hub.store.parcels():
        say("resumed an existing demo hub: its codes were printed when it was created")
        return
    for n, size in enumerate((d.Size.S, d.Size.M, d.Size.L), start=1):
        deposit, pickup = reserve_sample(hub, f"DEMO-{n:03d}", size)
        say(f"parcel DEMO-{n:03d} size {size.value} deposit {deposit} pickup {pickup}")
    drop, collect = reserve_sample(hub, "DEMO-004", d.Size.S, kind=d.Kind.RETURN)
    say(f"parcel DEMO-004 size S deposit {drop} pickup {collect}")
    say("  (DEMO-004 is a return: a resident drops it off with its deposit code,")
    say("   a carrier collects it with its pickup code)")


def demo_config(
    state_dir: str | None,
    socket: str | None,
    *,
    cloud: Cloud | None = None,
    hub_id: str | None = None,
    terminal_socket: str | None = None,
) -> tuple[HubConfig, bool]:
    """The demo hub's config with its state, its technician socket and its keypad's
    terminal socket (``keypad:1``; default ``terminal.sock``) in ``state_dir``. No
    technician group: root and the user who started the demo may use lockerctl."""
    cfg = load(DEMO_CONFIG)
    throwaway = state_dir is None
    state = state_dir or tempfile.mkdtemp(prefix="lockerd-demo-")
    paths = cfg.paths.model_copy(
        update={
            "state_dir": state,
            "socket": socket or os.path.join(state, "api.sock"),
            "technician_group": None,
        }
    )
    keypad = {
        "name": DEMO_TERMINAL,
        "socket": terminal_socket or os.path.join(state, "terminal.sock"),
        "group": None,
    }
    terminals = [t.model_dump() for t in cfg.terminals if t.name != DEMO_TERMINAL]
    if hub_id is None and cloud is not None:
        # on a shared broker, each demo its own hub (kept with the state directory)
        id_file = Path(state) / "hub-id"
        if not id_file.exists():
            Path(state).mkdir(parents=True, exist_ok=True)
            id_file.write_text(f"demo-{secrets.token_hex(3)}\n")
        hub_id = id_file.read_text().strip()
    update: dict[str, Any] = {"paths": paths, "cloud": cloud, "terminals": [keypad, *terminals]}
    if hub_id is not None:
        update["hub_id"] = hub_id
    return HubConfig.model_validate({**cfg.model_dump(), **update}), throwaway


async def run_demo(
    state_dir: str | None,
    socket: str | None,
    *,
    cloud: Cloud | None = None,
    hub_id: str | None = None,
    terminal_socket: str | None = None,
) -> int:
    cfg, throwaway = demo_config(
        state_dir, socket, cloud=cloud, hub_id=hub_id, terminal_socket=terminal_socket
    )
    bind(hub=cfg.hub_id)  # on every line from here, ours and the libraries'

    def say(line: str) -> None:
        print(line, flush=True)

    async with open_hub(cfg, simulate=True) as hub:
        sock = cfg.paths.socket
        kind = "a throw-away directory" if throwaway else "kept: run again with it to resume"
        say(
            f"lockerd demo: hub {cfg.hub_id} on the built-in simulator, "
            f"{len(cfg.compartments)} compartments on {len(cfg.buses)} buses"
        )
        say(f"state in {cfg.paths.state_dir} ({kind}); API socket {sock}")
        keypad = next(t.socket for t in cfg.terminals if t.name == DEMO_TERMINAL)
        say(f"terminal-socket {keypad}")
        say(f"hub {cfg.hub_id}")
        if cfg.cloud is not None:
            prefix = f"{cfg.cloud.prefix}/{cfg.hub_id}"
            say(f"cloud link to {cfg.cloud.url}: watch {prefix}/# with any MQTT client")
        sample_reservations(hub, say)
        ctl = f"lockerctl --socket {sock}"
        pad = f"lockerctl --socket {keypad}"
        say("")
        say("try, in another terminal (.venv/bin/ in front if the venv is not active);")
        say(f"the keypad ({DEMO_TERMINAL}) is {keypad}, the technician's socket {sock}:")
        hints = [
            (f"{pad} enter-code DEPOSIT-CODE", "at the keypad: the carrier's door opens"),
            (f"{ctl} sim door LABEL close", "the carrier shuts it: deposited"),
            (f"{pad} enter-code PICKUP-CODE", "at the keypad: the resident's door opens"),
            (f"{ctl} sim door LABEL close", "collected"),
            (f"{ctl} status", ""),
            (f"{ctl} events", "what the cloud will be told"),
            (f"{ctl} open A05 --reason 'check'", "a technician's audited open"),
            (f"{ctl} sim door D01 put", "D01-D08 have occupancy sensors:"),
            ("", "put something in before shutting"),
            (f"{pad} open A05 --reason x", "forbidden: a keypad may only enter codes"),
        ]
        width = max(len(command) for command, _ in hints)
        for command, note in hints:
            say(f"  {command:<{width}}  # {note}" if note else f"  {command}")
        return await serve(hub, ready=lambda: say("serving until Ctrl-C"), notifier=Notifier())


async def run_hub(cfg: HubConfig) -> int:
    bind(hub=cfg.hub_id)  # on every line from here, ours and the libraries'
    async with open_hub(cfg, simulate=cfg.simulated) as hub:
        log.info("lockerd_ready", compartments=len(cfg.compartments))
        notifier = Notifier()
        try:
            return await serve(hub, notifier=notifier)
        finally:
            notifier.close()
