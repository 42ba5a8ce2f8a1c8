"""Fault injection (ralf/faults.py): armed points raise on the asked hit, counting only
while armed; unknown points and actions are refused."""

from __future__ import annotations

import pytest

from ralf import faults
from ralf.faults import POINTS, WINDOWS, InjectedFault, crashpoint


@pytest.fixture(autouse=True)
def disarmed():
    yield
    faults.disarm()


def test_an_armed_point_raises_on_its_nth_hit_and_only_there():
    faults.arm("tick.end", 3)
    crashpoint("ingest.before_next")
    crashpoint("tick.end")
    crashpoint("tick.end")
    with pytest.raises(InjectedFault, match=r"tick.end \(hit 3\)"):
        crashpoint("tick.end")
    crashpoint("tick.end")  # past the hit: quiet again
    assert faults.disarm() == {"ingest.before_next": 1, "tick.end": 4}
    crashpoint("tick.end")  # disarmed: nothing counts or fires
    assert faults.disarm() == {}


def test_unknown_points_and_actions_are_refused():
    with pytest.raises(ValueError, match="unknown fault point"):
        faults.arm("no.such.point")
    with pytest.raises(ValueError, match="kill, raise or count"):
        faults.arm("tick.end", action="explode")


def test_every_point_names_a_window():
    assert POINTS == tuple(WINDOWS) and all(WINDOWS.values())
