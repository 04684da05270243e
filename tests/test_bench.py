"""The benchmark's quick mode runs to completion with no errors (speed is not asserted here)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest


def _bench(*args: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-m", "unichatd", "bench", *args, "--quick"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result: dict[str, object] = orjson.loads(completed.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("scenario", ["fanout", "rate", "history", "idle", "search"])
def test_quick_scenario_completes_without_errors(scenario: str) -> None:
    """Each scenario's quick mode finishes, reports no errors, and measured something."""
    result = _bench(scenario, *(["--rate", "100"] if scenario == "rate" else []))
    assert result["errors"] == 0
    if scenario in ("fanout", "rate"):
        assert float(result["deliveries_per_s"]) > 0  # type: ignore[arg-type]
    elif scenario == "idle":
        assert result["connected"] == result["conns"]
    elif scenario == "search":
        every_room, few_rooms = result["every_room_results"], result["5_rooms_results"]
        assert isinstance(every_room, int)
        assert isinstance(few_rooms, int)
        assert every_room > few_rooms > 0
    else:
        assert result["catchup_messages"] == 1000


def test_quick_ceiling_compares_with_the_relay() -> None:
    """The ceiling scenario measures unichatd and the bare relay in one run and reports the ratio."""
    result = _bench("ceiling")
    assert result["errors"] == 0
    assert float(result["deliveries_ratio"]) > 0  # type: ignore[arg-type]


def test_quick_mixed_measures_three_servers_side_by_side() -> None:
    """The mixed scenario runs the rate clients with no idle connections, then with idle ones
    attached and the heartbeat off, then on (1 s interval in quick mode, so pings happen)."""
    result = _bench("mixed")
    assert result["errors"] == 0
    summary = result["delivery_ms"]
    assert isinstance(summary, dict)
    assert [(run["idle"], run["ping_interval"]) for run in summary.values()] == [(0, 1.0), (200, 0), (200, 1.0)]
    for run in summary.values():
        assert float(run["acked_per_s"]) > 0
        assert float(run["p50"]) <= float(run["p99"]) <= float(run["max"])


def test_quick_storm_reconnects_every_idle_connection_during_the_rate_run() -> None:
    """The storm scenario measures the rate run quiet, then while every idle connection
    drops and comes back (200 of them in quick mode)."""
    result = _bench("storm")
    assert result["errors"] == 0
    summary = result["delivery_ms"]
    assert isinstance(summary, dict)
    assert [run["reconnected"] for run in summary.values()] == [0, 200]
    for run in summary.values():
        assert float(run["acked_per_s"]) > 0
        assert float(run["p50"]) <= float(run["p99"]) <= float(run["max"])


def test_quick_webhooks_measures_with_and_without_a_receiver() -> None:
    """The webhooks scenario runs fan-out without and with a webhook side by side, counts the
    events the receiver took, and measures the server API's message posts."""
    result = _bench("webhooks")
    assert result["errors"] == 0
    assert float(result["without_webhook"]["deliveries_per_s"]) > 0  # type: ignore[index]
    assert float(result["with_webhook"]["deliveries_per_s"]) > 0  # type: ignore[index]
    assert int(result["webhook_events_in_all"]) > 0  # type: ignore[call-overload]
    api = result["api"]
    assert isinstance(api, dict)
    assert api["concurrent"]["posts"] == 2000
