"""OncePerKey: how a process asks for a generation's concatenation once, however many of its shots
end together (tasks/workflows.py, request_concat_step)."""

from __future__ import annotations

import threading

import pytest

from nanogen.tasks.runtime import OncePerKey


def test_callers_for_one_key_run_the_action_once() -> None:
    once = OncePerKey()
    calls: list[str] = []
    gate = threading.Barrier(21)
    ran: list[bool] = []

    def shot() -> None:
        gate.wait()
        ran.append(once.run("gen_a", lambda: calls.append("gen_a")))

    threads = [threading.Thread(target=shot) for _ in range(21)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["gen_a"], "one enqueue for 21 shots"
    assert ran.count(True) == 1 and ran.count(False) == 20
    assert once.run("gen_b", lambda: calls.append("gen_b")) is True, "another key runs its own"
    assert calls == ["gen_a", "gen_b"]


def test_a_failed_action_is_run_again_by_the_next_caller() -> None:
    once = OncePerKey()

    def unreachable() -> None:
        raise ConnectionError("database restarting")

    with pytest.raises(ConnectionError):
        once.run("gen_a", unreachable)
    calls: list[int] = []
    assert once.run("gen_a", lambda: calls.append(1)) is True
    assert once.run("gen_a", lambda: calls.append(2)) is False
    assert calls == [1]


def test_it_remembers_only_the_most_recent_keys() -> None:
    once = OncePerKey(remember=2)
    calls: list[str] = []
    for key in ("a", "b", "c"):
        once.run(key, lambda key=key: calls.append(key))
    assert once.run("c", lambda: calls.append("c again")) is False
    assert once.run("a", lambda: calls.append("a again")) is True, "forgotten: the action's idempotency holds"
    assert calls == ["a", "b", "c", "a again"]
