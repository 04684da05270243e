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


@pytest.mark.parametrize("scenario", ["fanout", "rate", "history", "idle"])
def test_quick_scenario_completes_without_errors(scenario: str) -> None:
    """Each scenario's quick mode finishes, reports no errors, and measured something."""
    result = _bench(scenario, *(["--rate", "100"] if scenario == "rate" else []))
    assert result["errors"] == 0
    if scenario in ("fanout", "rate"):
        assert float(result["deliveries_per_s"]) > 0  # type: ignore[arg-type]
    elif scenario == "idle":
        assert result["connected"] == result["conns"]
    else:
        assert result["catchup_messages"] == 1000


def test_quick_ceiling_compares_with_the_relay() -> None:
    """The ceiling scenario measures unichatd and the bare relay in one run and reports the ratio."""
    result = _bench("ceiling")
    assert result["errors"] == 0
    assert float(result["deliveries_ratio"]) > 0  # type: ignore[arg-type]
