"""Crash safety: a writer killed with SIGKILL at random moments, 20 times, loses nothing it
acknowledged and leaves nothing half-written (see benchmarks/stress_crash.py)."""
import pytest

from benchmarks import stress_crash


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_memory():
    summary = stress_crash.main(["--trials", "20", "--max-wait", "0.8", "--seed", "3"])
    assert summary["trials"] == 20
    assert summary["acknowledged_memories"] > 0
    assert summary["lost_or_wrong"] == 0
