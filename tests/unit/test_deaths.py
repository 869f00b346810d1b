"""Host deaths are counted per task: the task in flight at N deaths fails alone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pool.control.deaths import count_deaths, forget


def test_a_task_fails_at_the_nth_death_it_was_in_flight_for() -> None:
    counts, doomed = count_deaths({}, ["p"], limit=2)
    assert counts == {"p": 1} and doomed == ()
    counts, doomed = count_deaths(counts, ["p"], limit=2)
    assert doomed == ("p",) and counts == {}, "a doomed task ends: its count goes with it"


def test_only_the_tasks_in_flight_are_charged() -> None:
    counts, doomed = count_deaths({"old": 1, "q": 1}, ["q", "r"], limit=2)
    assert doomed == ("q",) and counts == {"old": 1, "r": 1}


def test_a_limit_of_one_fails_at_the_first_death() -> None:
    assert count_deaths({}, ["a", "b"], limit=1) == ({}, ("a", "b"))


def test_a_finished_task_is_forgotten() -> None:
    assert forget({"a": 1, "b": 1}, ["a", "z"]) == {"b": 1}


@given(st.lists(st.lists(st.sampled_from("abcde"), max_size=3, unique=True), max_size=30),
       st.integers(1, 4))
def test_no_task_is_charged_more_than_the_limit(deaths: list[list[str]], limit: int) -> None:
    counts: dict[str, int] = {}
    doomed_total: list[str] = []
    for in_flight in deaths:
        before = dict(counts)
        counts, doomed = count_deaths(counts, in_flight, limit)
        doomed_total.extend(doomed)
        assert all(0 < n < limit for n in counts.values())
        assert set(doomed) == {t for t in in_flight if before.get(t, 0) + 1 >= limit}
    for task in "abcde":
        times = sum(task in d for d in deaths)
        assert doomed_total.count(task) == times // limit
