"""tasks/futex_hash: a worker's futex hash grows with the threads it will run, and never shrinks.

Each check runs in a child process of its own: the table belongs to the process, and the tests'
own process has threads (and a table) of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nanogen.tasks import futex_hash


def in_child(code: str) -> dict[str, object]:
    script = "import json, threading\nfrom nanogen.tasks import futex_hash as f\n" + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


private_hash = pytest.mark.skipif(
    futex_hash.current_slots() is None, reason="this kernel has no private futex hash (Linux < 6.16)"
)


def test_four_buckets_per_thread_as_a_power_of_two() -> None:
    assert futex_hash.slots_for(1) == 16
    assert futex_hash.slots_for(4) == 16
    assert futex_hash.slots_for(5) == 32
    assert futex_hash.slots_for(4016) == 16384
    assert futex_hash.slots_for(4096) == 16384
    assert futex_hash.slots_for(4097) == 32768


@private_hash
def test_the_kernel_default_is_small_and_a_worker_grows_it_before_starting_threads() -> None:
    answer = in_child(
        """
        stop = threading.Event()
        threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(300)]
        for t in threads: t.start()
        default = f.current_slots()  # what the kernel gave a process of 300 threads
        sized = f.size_for_threads(4016)
        more = [threading.Thread(target=stop.wait, daemon=True) for _ in range(300)]
        for t in more: t.start()
        after_threads = f.current_slots()
        stop.set()
        print(json.dumps({"default": default, "sized": sized, "after_threads": after_threads}))
        """
    )
    # The kernel sizes a process's table from its CPUs, not its threads: far below 4 per thread.
    assert isinstance(answer["default"], int) and answer["default"] < futex_hash.slots_for(300)
    assert answer["sized"] == 16384
    assert answer["after_threads"] == 16384  # starting threads later does not shrink it back


@private_hash
def test_never_shrinks_a_larger_table() -> None:
    answer = in_child(
        """
        first = f.size_for_threads(20000)
        second = f.size_for_threads(10)
        print(json.dumps({"first": first, "second": second, "now": f.current_slots()}))
        """
    )
    assert answer == {"first": 131072, "second": 131072, "now": 131072}


@private_hash
def test_a_worker_process_sizes_its_table_at_launch(tmp_path: Path) -> None:
    """lifecycle.launch on the embedded default: the worker's table holds its DBOS threads."""
    answer = in_child(
        f"""
        from pathlib import Path
        from nanogen.migrate import migrate
        from nanogen.settings import Settings
        from nanogen.tasks import lifecycle
        settings = Settings(home=Path({str(tmp_path)!r}))
        migrate(settings.resolved_database_url)
        process = lifecycle.launch(settings, "worker", work=True)
        threads = lifecycle.executor_threads(settings, lifecycle.worker_queues(process.runtime))
        slots = f.current_slots()
        process.stop()
        print(json.dumps({{"slots": slots, "wanted": f.slots_for(threads), "threads": threads}}))
        """
    )
    assert answer["threads"] > 16
    assert answer["slots"] == answer["wanted"]
