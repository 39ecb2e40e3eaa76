"""The waterfall's clock (unlearnflow/timing.py): each step's seconds, in order, from the
process's start; a step marked twice adds up; a part's steps from where it began."""

import time

from unlearnflow.timing import Clock, process_age


def test_steps_are_the_time_between_marks_in_order():
    clock = Clock()
    time.sleep(0.02)
    clock.mark("a")
    time.sleep(0.04)
    clock.mark("b")
    steps = clock.steps()
    assert list(steps) == ["a", "b"]
    assert 0.015 <= steps["a"] < 0.5 and 0.035 <= steps["b"] < 0.5
    assert abs(sum(steps.values()) - clock.since_start()) < 0.02


def test_a_step_marked_twice_adds_up_and_a_part_starts_where_it_began():
    clock = Clock()
    clock.mark("a")
    first = len(clock.marks)
    time.sleep(0.02)
    clock.mark("b")
    time.sleep(0.02)
    clock.mark("b")
    assert list(clock.steps(first=first)) == ["b"] and clock.steps(first=first)["b"] >= 0.035
    assert list(clock.steps()) == ["a", "b"]


def test_a_command_clock_counts_from_the_process_start():
    age = process_age()
    assert age is not None and age > 0  # this process started before the test
    clock = Clock.since_process_start()
    assert clock.since_start() >= round(age, 2) - 0.02
