"""The SDK's history and ledger reads (``list``, ``generation``, ``delete_files``, ``ledger``) against
the shared real server."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from nanogen import AsyncClient, Client, errors
from tests.conftest import Server

FAST = 0.2


def test_list_pages_filters_detail_delete_and_ledger(server: Server) -> None:
    account = server.new_account(1_000)
    with Client(api_key=account.key, base_url=server.base_url) as client:
        kept = client.images.generate("kept")
        kept.wait(poll_interval=FAST)
        lost = client.images.generate("lost [sandbox:fail]")
        with pytest.raises(errors.GenerationFailed):
            lost.wait(poll_interval=FAST)
        video = client.videos.generate(["one shot"])
        video.wait(poll_interval=FAST)

        first = client.list(limit=2)
        assert [g.generationId for g in first.data] == [video.id, lost.id] and first.nextCursor
        rest = client.list(limit=2, cursor=first.nextCursor)
        assert [g.generationId for g in rest.data] == [kept.id] and rest.nextCursor is None
        assert [g.generationId for g in client.list(product="image").data] == [lost.id, kept.id]
        assert [g.generationId for g in client.list(status=["failed", "pending"]).data] == [lost.id]
        assert client.list(status="completed", product="video").data[0].status == "completed"

        detail = client.generation(kept.id)
        assert detail.prompt == "kept" and detail.tasks[0].outputUrl and detail.filesDeletedAt is None
        deleted = client.delete_files(kept.id)
        assert deleted.filesDeletedAt is not None and deleted.credits == detail.credits
        assert httpx.get(detail.tasks[0].outputUrl).status_code == 410
        with pytest.raises(errors.NotFound):
            client.generation("gen_000000000000000000000000")

        entries = client.ledger(limit=3)
        assert [e.kind for e in entries.data] == ["debit", "refund", "debit"] and entries.nextCursor
        older = client.ledger(cursor=entries.nextCursor)
        assert [e.kind for e in older.data] == ["debit", "grant"] and older.nextCursor is None
        assert entries.data[0].balanceAfter == account.balance()
        assert older.data[-1].balanceAfter == 1_000 and older.data[-1].generationId is None


def test_async_list_and_ledger(server: Server) -> None:
    account = server.new_account(100)

    async def main() -> None:
        async with AsyncClient(api_key=account.key, base_url=server.base_url) as client:
            image = await client.images.generate("async")
            await image.wait(poll_interval=FAST)
            page = await client.list(product="image")
            assert [g.generationId for g in page.data] == [image.id]
            assert (await client.generation(image.id)).status == "completed"
            ledger = await client.ledger()
            assert [e.kind for e in ledger.data] == ["debit", "grant"]
            assert ledger.data[0].amount == -image.credits_used
            assert ledger.data[0].balanceAfter == account.balance() == 100 - image.credits_used

    asyncio.run(main())
