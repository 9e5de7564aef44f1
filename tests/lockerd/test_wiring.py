"""The one wiring (lockerd.daemon.wiring.open_hub) on a real hub's ports that are not
there: the start waits for the buses at once, and the boards on them say why they are
not online."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockerd.config import HubConfig
from lockerd.daemon import wiring
from lockerd.daemon.wiring import open_hub
from lockerd.demo.ports import SimulatedPorts
from lockerd.hub.codes import create_key
from tests.support.buses import FAST_BUS


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short directory for the sockets (a Unix socket's path is short)."""
    path = Path(tempfile.mkdtemp(prefix="lk-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def three_missing_buses(tmp_path: Path, run: Path) -> HubConfig:
    buses = [
        {
            "name": name,
            "port": str(tmp_path / f"usb-adapter-{name}"),  # never plugged in
            **FAST_BUS,
            "boards": [{"kind": "kerong-cu48", "address": 0, "channels": 2}],
        }
        for name in "ABC"
    ]
    return HubConfig.model_validate(
        {
            "hub_id": "test-hub",
            "buses": buses,
            "compartments": [
                {"label": f"{name}01", "size": "S", "bus": name, "board": 0, "channel": 1}
                for name in "ABC"
            ],
            "paths": {
                "state_dir": str(tmp_path / "hub"),
                "socket": str(run / "api.sock"),
                "disk_reserve_mb": 0,
            },
        }
    )


async def test_missing_buses_cost_the_start_one_wait_and_their_boards_say_why(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wiring, "OPEN_WAIT_S", 1.0)
    cfg = three_missing_buses(tmp_path, run_dir)
    create_key(cfg.key_path())
    started = time.monotonic()
    async with open_hub(cfg) as hub:
        took = time.monotonic() - started
        assert took < 2.5, f"the buses were waited for one after another ({took:.1f} s)"
        for name, bus in hub.buses.items():
            (board,) = bus.snapshot()["boards"]
            assert board["online"] is False, name
            assert board["last_error"].startswith(f"port {tmp_path}/usb-adapter-{name} not open")
            assert "No such file or directory" in board["last_error"]
        assert not any(b.describe().online for b in hub.boards.values())


async def test_the_hubs_settings_reach_the_api_and_the_cloud_link(
    tmp_path: Path, run_dir: Path
) -> None:
    """[codes] length and [timers] pickup_window_h are what a parcel reserved at the hub
    (lockerctl reserve) and a cloud reservation without a window of its own get."""
    base = three_missing_buses(tmp_path, run_dir).model_dump()
    cfg = HubConfig.model_validate(
        {
            **base,
            "buses": base["buses"][:1],
            "compartments": base["compartments"][:1],
            "codes": {**base["codes"], "length": 10},
            "timers": {**base["timers"], "pickup_window_h": 5},
            "cloud": {"url": "mqtt://127.0.0.1:1", "reconnect_min_s": 0.05},
        }
    )
    async with open_hub(cfg, ports=SimulatedPorts()) as hub:
        assert (hub.api.code_length, hub.api.pickup_window_h) == (10, 5)
        assert hub.cloud is not None
        assert hub.cloud.default_collect_window_s == 5 * 3600
