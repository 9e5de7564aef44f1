"""The crash campaign (bench/crash_campaign.py), a few runs: the daemon killed at
random moments under load, with a broker outage and a vanishing adapter, checked
after every restart. The campaign figure itself comes from
``python -m bench.crash_campaign --runs 500`` (bench/results/crash_campaign.md)."""

from __future__ import annotations

from pathlib import Path

from bench.crash_campaign import Campaign


async def test_a_short_campaign_finds_nothing(tmp_path: Path) -> None:
    campaign = Campaign(tmp_path, seed=20261122, broker_every=2, vanish_every=3)
    tally = await campaign.campaign(3)
    assert tally.violations == []
    assert tally.runs == tally.kills == 3
    assert tally.broker_restarts == 1
    assert tally.adapter_vanishes == 1
    assert sum(tally.acked.values()) > 0  # the load really did things
    assert tally.events > 0  # ... and the cloud saw them, every seq
    assert tally.unlocks > 0


def test_a_code_counts_as_stored_only_when_it_stands_alone() -> None:
    from bench.crash_campaign import standalone  # noqa: PLC0415

    code = b"12345678"
    assert standalone(b'{"code": "12345678"}', code)  # a leak
    assert standalone(b"\x03\x1712345678\x00", code)  # a TEXT value in a record
    assert not standalone(b"9f3e12345678ab01", code)  # inside a code hash
    assert not standalone(b"1763812345678.25", code)  # inside a timestamp
    assert not standalone(b"no code here", code)
