"""The open-file limit of a worker that holds a connection per job slot.

A Google worker runs up to 4,000 jobs at once by default, each holding a connection to Google while
its call is open, and a socket is a file. Linux's default soft limit on open files is 1,024 (systemd
services, most shells), far below that, while the hard limit is usually much higher (systemd: 524,288):
the soft limit is kept low for programs that pass descriptors to ``select()``, which nanogen's event
loops and libraries do not use. So a worker raises its soft limit to what its slots need, as Go's
runtime does at start, within the hard limit; it never lowers one, and it warns when the hard limit
is the lower.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Files besides the slots' connections: databases, storage, the API's own clients, libraries.
HEADROOM = 1024


def allow(slots: int) -> int:
    """Raise the soft limit on open files to ``slots`` + HEADROOM if it is lower (within the hard
    limit); the soft limit after."""
    wanted = slots + HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # a kernel cap below the hard limit (fs.nr_open)
            log.warning("could not raise the open-file limit to %d: %s", target, exc)
    if soft < wanted:
        log.warning(
            "the open-file limit is %d, below the %d this worker's %d job slots may need (each holds a "
            "connection while it waits on a provider); raise the hard limit (LimitNOFILE, ulimit -Hn) "
            "or lower the concurrency",
            soft,
            wanted,
            slots,
        )
    return soft
