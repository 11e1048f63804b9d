"""A worker raises its soft limit on open files to what its job slots need, within the hard limit
(each run in a child process whose limits the test sets, so the suite's own are untouched)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

PROGRAM = """
import json, logging, resource, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from nanogen.tasks import open_files
now = open_files.allow(int(sys.argv[1]))
print(json.dumps([now, *resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""


def run_with_limits(slots: int, soft: int, hard: int) -> tuple[list[int], str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(slots)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(done.stdout), done.stderr


def test_the_soft_limit_is_raised_to_the_slots_needs() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = min(hard, 8192)
    (now, soft, kept_hard), log = run_with_limits(4000, 1024, hard)
    expected = min(hard, 4000 + 1024)
    assert (now, soft, kept_hard) == (expected, expected, hard)
    assert ("below the 5024" in log) == (hard < 5024), log


def test_a_hard_limit_below_the_needs_is_used_and_warned_about() -> None:
    (now, soft, hard), log = run_with_limits(4000, 256, 2048)
    assert (now, soft, hard) == (2048, 2048, 2048)
    assert "the open-file limit is 2048, below the 5024 this worker's 4000 job slots may need" in log


def test_a_limit_already_high_enough_is_left_alone() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    (now, soft, _hard), log = run_with_limits(32, min(hard, 4096), hard)
    assert now == soft == min(hard, 4096) and log == ""
