"""Pieces the generate routes share: OpenAPI documentation of bodies and errors, the balance
pre-check, and submitting with input cleanup."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from nanogen import errors, ledger
from nanogen.products import Product
from nanogen.schemas import ErrorResponse
from nanogen.server.inputs import discard_inputs
from nanogen.server.services import Services
from nanogen.tasks import store
from nanogen.tasks.submit import Submission


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Document a body the route parses itself (so that errors use the contract's codes)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    }


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Invalid input (errorCode names the problem)",
        401: "LOGIN_REQUIRED",
        402: "INSUFFICIENT_CREDITS (with requiredCredits)",
        403: "FORBIDDEN",
        404: "NOT_FOUND / TASK_NOT_FOUND",
        409: "IDEMPOTENCY_KEY_IN_USE (nanogen: the first request with this Idempotency-Key still runs)",
        422: "IDEMPOTENCY_KEY_REUSED (nanogen: this Idempotency-Key came with another body)",
        429: "API_KEY_RATE_LIMIT_EXCEEDED (with Retry-After)",
        500: "INTERNAL_ERROR / CREDIT_RESERVATION_FAILED",
        503: "SERVICE_UNAVAILABLE",
    }
    return {code: {"model": ErrorResponse, "description": described[code]} for code in codes}


def check_engine(svc: Services, product: Product, **options: str) -> None:
    """Refuse, before any credit moves, what the configured engine cannot do."""
    reason = svc.runtime.engines[product].unsupported(product, **options)
    if reason:
        raise errors.InvalidParameter(f"Not available on this server: {reason}")


async def precheck_balance(svc: Services, account_id: str, credits: int) -> None:
    """Fail fast before fetching inputs; the debit itself is the authoritative check."""
    if (await ledger.balance_reading(svc.reads, account_id) or 0) < credits:
        raise errors.InsufficientCredits(credits)


async def submit(svc: Services, submission: Submission, stored_inputs: dict[str, dict[str, Any]]) -> None:
    try:
        await svc.writer.submit(submission)
    except errors.APIError:
        await discard_inputs(svc, stored_inputs)
        raise


# A synchronous dialect (OpenAI images, Gemini generateContent) holds its request until the image task
# ends: reads start every 50 ms and back off to 0.5 s (the task may run in another process), and give
# up this long past the task's deadline, by which the watchdog has failed and refunded it.
WAIT_FIRST_S, WAIT_MAX_S, WAIT_GRACE_S = 0.05, 0.5, 30.0


async def image_task_when_ended(svc: Services, generation_id: str) -> store.TaskRecord | None:
    """The generation's (one) image task once it has ended; None when it is still open past its deadline."""
    wait = WAIT_FIRST_S
    while True:
        task = (await store.read_generation_tasks(svc.reads, generation_id))[0]
        if task.status.is_terminal:
            return task
        if time.time() > task.deadline_at + WAIT_GRACE_S:
            return None
        await asyncio.sleep(wait)
        wait = min(WAIT_MAX_S, wait * 2)
