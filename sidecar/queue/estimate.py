"""How long a place in line will wait: what the waiting page and the control room show.

From the admissions of the last minute when there were any. When nobody was let
in during the last minute (a sale's first minute, a full house of long
sessions), from the policy instead: with ``capacity`` a slot frees when a session
ends, and a session of a visitor who stopped using the site ends ``session_ttl``
after their last page, so that is the typical session length taken; with
``admit_per_minute`` the line moves at most that fast. That guess is shown as a
wider range than a measured one.
"""

from __future__ import annotations

import math

from .engine import QueueState

MEASURED_LOW, MEASURED_HIGH = 0.75, 1.5  # the range around an estimate from measured admissions
GUESSED_RANGE = (0.5, 2.0)  # around one from the capacity and the session length
NOT_MOVING = ("paused", "off")


def walks_in(state: QueueState) -> bool:
    """A newcomer would be let in at once: nobody in line, room and rate to spare."""
    s = state.settings
    if s.mode != "on" or state.closed or state.waiting or state.recalled:
        return False
    room = s.capacity == 0 or state.active + state.invited < s.capacity
    rate = s.admit_per_minute == 0 or state.admitted_last_minute < s.admit_per_minute
    return room and rate


def wait(position: int, state: QueueState) -> tuple[float | None, list[int] | None]:
    """(seconds, [low, high]) for the ``position``-th in line; (None, None) when the
    line does not move (paused, before the opening) or nothing bounds it."""
    s = state.settings
    if s.mode in NOT_MOVING or state.closed:
        return None, None
    rate = state.admissions_per_second
    if rate > 0:
        return measured(position, rate)
    guesses = []
    if s.capacity > 0:
        turns = math.ceil(position / s.capacity)  # how many times the house empties
        guesses.append((turns - 0.5) * s.session_ttl)
    if s.admit_per_minute > 0:
        guesses.append(position * 60 / s.admit_per_minute)
    if not guesses:
        return None, None
    eta, (lo, hi) = max(guesses), GUESSED_RANGE
    return round(eta, 1), [math.floor(eta * lo), math.ceil(eta * hi)]


def measured_rate(state: QueueState) -> float:
    """Admissions a second for :func:`measured`, when the line moves by them (else 0:
    ask :func:`wait`). The same for every waiter of ``state``: worked out once."""
    if state.settings.mode in NOT_MOVING or state.closed:
        return 0.0
    return state.admissions_per_second


def measured(position: int, rate: float) -> tuple[float, list[int]]:
    """:func:`wait` when ``rate`` admissions a second were measured."""
    eta = position / rate
    return round(eta, 1), [math.floor(eta * MEASURED_LOW), math.ceil(eta * MEASURED_HIGH)]


def newcomer_wait(state: QueueState) -> float | None:
    """The wait of someone joining now: 0 when they would walk in."""
    if walks_in(state):
        return 0.0
    return wait(state.waiting + state.recalled + 1, state)[0]
