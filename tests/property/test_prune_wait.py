"""The watchdog's wait between disk-tier prunes (watchdog.prune_wait): never longer than the configured
period, never shorter than MIN_PRUNE_S, and short enough that a tier growing as fast as it did since the
previous prune does not pass HARD_OVER of its cap before the next one, wherever that is possible."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from entrypoint.programs.watchdog import HARD_OVER, MIN_PRUNE_S, prune_wait

GIB = 1 << 30


@given(period=st.floats(1, 3600), cap=st.floats(0.1 * GIB, 10_000 * GIB),
       fill=st.floats(0, 1.2), rate=st.floats(-1e10, 1e11))
def test_prune_wait_stays_in_bounds_and_keeps_the_tier_under_the_hard_bound(period, cap, fill, rate):
    held = fill * cap
    wait = prune_wait(period, cap, held, rate)
    assert MIN_PRUNE_S <= wait <= period
    if rate <= 0:
        assert wait == period  # not growing: the period
    elif wait > MIN_PRUNE_S:
        # the growth until the next prune fits in the room left under the hard bound
        assert held + rate * wait <= HARD_OVER * cap * (1 + 1e-9)


def test_prune_wait_on_the_h200_measurement():
    # a 3 GiB tier at 90 % of its cap, written at 0.65 GB/s: room for 0.45 GiB, ~0.74 s, not the 2 s period
    wait = prune_wait(2.0, 3 * GIB, 0.9 * 3 * GIB, 0.65e9)
    assert 0.7 < wait < 0.8
