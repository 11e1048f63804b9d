"""The task state machine: pending -> generating -> completed | failed (cog's Status.is_terminal)."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    GENERATING = "generating"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED)

    @property
    def video_status(self) -> str:
        """The Veo page's per-shot vocabulary: processing until the shot ends."""
        return self.value if self.is_terminal else "processing"


TERMINAL = tuple(s.value for s in TaskStatus if s.is_terminal)
OPEN = tuple(s.value for s in TaskStatus if not s.is_terminal)
