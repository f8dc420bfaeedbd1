"""fleet.ssh.deadlines: one thread serves every pending deadline of the process."""

from __future__ import annotations

import os
import threading

import pytest

from fleet.ssh import deadlines

WAIT_S = 5.0  # a hang guard, not a timing check


def test_deadlines_fire_in_order_of_their_time_not_of_their_scheduling() -> None:
    fired: list[str] = []
    done = threading.Event()
    deadlines.call_later(0.15, lambda: (fired.append("late"), done.set()))
    deadlines.call_later(0.05, lambda: fired.append("early"))
    assert done.wait(WAIT_S)
    assert fired == ["early", "late"]


def test_a_cancelled_deadline_never_fires() -> None:
    fired: list[str] = []
    done = threading.Event()
    deadlines.call_later(0.05, lambda: fired.append("cancelled")).cancel()
    deadlines.call_later(0.1, done.set)
    assert done.wait(WAIT_S)
    assert fired == []


def test_a_failing_callback_does_not_stop_the_others() -> None:
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    deadlines.call_later(0.0, fail)
    deadlines.call_later(0.05, done.set)
    assert done.wait(WAIT_S)


def test_cancelled_deadlines_do_not_pile_up() -> None:
    many = [deadlines.call_later(3600, lambda: None) for _ in range(5000)]
    for deadline in many:
        deadline.cancel()
    assert len(deadlines._timers._heap) < 2500


def test_cancel_after_the_call_is_harmless() -> None:
    done = threading.Event()
    deadline = deadlines.call_later(0.0, done.set)
    assert done.wait(WAIT_S)
    deadline.cancel()
    deadline.cancel()


# Python 3.12+ warns about fork() in a process with threads; the child here only uses
# the deadline module, which resets itself at fork.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_child_gets_its_own_deadline_thread() -> None:
    deadlines.call_later(3600, lambda: None)  # the parent's thread is running
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread did not come along
        fired = threading.Event()
        deadlines.call_later(0.01, fired.set)
        os._exit(0 if fired.wait(WAIT_S) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_many_deadlines_one_thread() -> None:
    before = threading.active_count()
    handles = [deadlines.call_later(60, lambda: None) for _ in range(200)]
    assert threading.active_count() <= before + 1
    for handle in handles:
        handle.cancel()


def test_a_callback_raising_system_exit_does_not_stop_the_thread() -> None:
    done = threading.Event()

    def leave() -> None:
        raise SystemExit(3)

    deadlines.call_later(0.0, leave)
    deadlines.call_later(0.05, done.set)
    assert done.wait(WAIT_S)


def test_the_thread_is_started_again_should_it_have_died(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    monkeypatch.setattr(deadlines._timers, "_thread", dead)
    done = threading.Event()
    deadlines.call_later(0.0, done.set)
    assert done.wait(WAIT_S)
