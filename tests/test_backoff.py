"""monmouth.backoff: the retry delays every retrying loop uses."""

from __future__ import annotations

import pytest

from monmouth.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_over_after_a_success():
    b = Backoff(0.5, 4.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.failures == 6
    b.reset()
    assert b.next() == 0.5 and b.delay(3) == 2.0 and b.delay(0) == 0.5


def test_a_cap_read_at_each_step_follows_a_reloaded_setting():
    cap = [30.0]
    b = Backoff(0.1, lambda: cap[0])
    assert [b.next() for _ in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    cap[0] = 0.25
    assert b.next() == 0.25
    cap[0] = 0.01  # never below the first delay
    assert b.next() == 0.1


def test_full_jitter_stays_between_the_floor_and_the_exponential_value():
    b = Backoff(1.0, 8.0, jitter=True)
    for failures, top in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        draws = [b.delay(failures) for _ in range(200)]
        assert all(1.0 <= d <= top for d in draws), (failures, min(draws), max(draws))
    assert len({round(b.delay(5), 6) for _ in range(50)}) > 1  # drawn, not fixed


def test_the_first_delay_must_be_positive():
    with pytest.raises(ValueError, match="first delay must be positive"):
        Backoff(0, 1)
