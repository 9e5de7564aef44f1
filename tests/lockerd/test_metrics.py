"""The Prometheus endpoint of a real ``lockerd run`` process: scraped over HTTP and
parsed with prometheus-client's own parser, after a wrong code, a technician's open
and a door the simulated person shuts."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from lockerd.api.server import call
from tests.support.daemon import hub_config, run_daemon
from tests.support.waiting import until_result

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def metrics_port(log: Path) -> int:
    async def find() -> int | None:
        for line in (await asyncio.to_thread(log.read_text)).splitlines():
            if '"metrics_listening"' in line:
                return int(json.loads(line)["port"])
        return None

    port = await until_result(find, lambda p: p is not None, within=20, what="metrics_listening")
    assert port is not None
    return port


async def test_metrics_follow_what_the_hub_does(tmp_path: Path) -> None:
    config = hub_config(tmp_path, extra='[metrics]\naddress = "127.0.0.1"\nport = 0\n')
    sock = tmp_path / "api.sock"
    async with run_daemon(tmp_path, config):
        port = await metrics_port(tmp_path / "daemon.log")
        before = await asyncio.to_thread(scrape, port)
        assert value(before, "lockerd_watchdog_healthy") == 1.0
        assert total(before, "lockerd_bus_requests_total") > 0
        assert value(before, "lockerd_board_online", bus="A", board="kerong-cu48@0") == 1.0

        keypad = tmp_path / "terminal.sock"  # keypad:1's
        wrong = await call(keypad, {"op": "enter_code", "code": "00000000"})
        assert wrong["result"]["status"] == "refused"
        opened = await call(sock, {"op": "open", "label": "A05", "reason": "metrics test"})
        assert opened["result"]["status"] == "opened", opened
        assert (await call(sock, {"op": "sim_door", "label": "A05", "action": "close"}))["ok"]

        def settled(s: Samples) -> bool:
            return (
                value(s, "lockerd_events_total", type="door_shut") >= 1
                and value(s, "lockerd_outbox_events") > 0
            )

        after = await until_result(
            lambda: asyncio.to_thread(scrape, port), settled, within=20, what="door shut"
        )
    assert value(after, "lockerd_wrong_codes_total", terminal="keypad:1") == 1
    assert value(after, "lockerd_open_outcomes_total", outcome="opened") == 1
    assert value(after, "lockerd_events_total", type="door_opened") == 1
    # every answered transaction is in its board's histogram, once
    for (name, labels), v in after.items():
        if name == "lockerd_bus_transaction_seconds_count":
            key = dict(labels)
            replies = value(after, "lockerd_bus_replies_total", **key)
            inf = value(after, "lockerd_bus_transaction_seconds_bucket", **key, le="+Inf")
            assert v == inf
            assert abs(v - replies) <= 5  # (the two are read a few polls apart)
    assert value(after, "lockerd_poll_cycles_total", bus="A") > 0
    assert value(after, "lockerd_poll_cycle_seconds", bus="B") > 0
    assert "lockerd_mqtt_connected" not in {n for n, _ in after}  # no cloud configured
    assert value(after, "lockerd_outbox_oldest_event_age_seconds") >= 0
