"""Live progress: ``GET /api/generations/{id}/events`` (server-sent events) and ``Prefer: wait=N`` on both
check-status endpoints, against a real ``nanogen serve`` over HTTP.

Both wait on one process-wide watcher; the last test checks that it reads the database once per tick
however many streams are open (the CPU and memory of 1,000 streams: bench/bench_events.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nanogen.client import AsyncClient, Client
from tests.conftest import OUTCOME_WAIT_S, Server, assert_envelope, wait_for

METRICS_TOKEN = "metrics-token-for-the-events-tests"
IMAGE = "/api/nano-banana-2"
VIDEO = "/api/veo-3"
SLOW = "[sandbox:slow=600]"
ENV = {
    "NANOGEN_WATCH_INTERVAL_S": "0.1",
    "NANOGEN_METRICS_TOKEN": METRICS_TOKEN,
    "NANOGEN_RATE_LIMIT_GENERATE": "10000/hour",
    "NANOGEN_SANDBOX_PROGRESS_STEPS": "4",
}


def _start(home: Any, database_url: str | None) -> Server:
    return Server(home, extra_env=ENV, database_url=database_url).start()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = _start(tmp_path_factory.mktemp("events"), None)
    yield server
    server.stop()


# -- helpers --------------------------------------------------------------------------------------------
Event = dict[str, Any]  # {"id": int, "event": str, "data": dict}


def _events(
    c: httpx.Client, generation_id: str, last_id: int | None = None, stop_after: int | None = None
) -> tuple[int, list[Event], bool]:
    """The stream's status code, its events (up to ``stop_after``, then disconnect) and whether the
    server closed it."""
    headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
    got: list[Event] = []
    with c.stream("GET", f"/api/generations/{generation_id}/events", headers=headers, timeout=60) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, got, True
        assert r.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in r.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if fields:
                got.append(
                    {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}
                )
                fields = {}
                if stop_after is not None and len(got) >= stop_after:
                    return 200, got, False
    return 200, got, True


def _image(c: httpx.Client, prompt: str) -> str:
    r = c.post(f"{IMAGE}/generate", json={"prompt": prompt})
    assert r.status_code == 200, r.text
    generation_id: str = r.json()["generationId"]
    return generation_id


def _video(c: httpx.Client, prompts: list[str]) -> dict[str, Any]:
    shots = [{"id": f"s{i}", "prompt": p, "generationType": "TEXT_2_VIDEO"} for i, p in enumerate(prompts)]
    r = c.post(f"{VIDEO}/generate", json={"shots": shots})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _check(c: httpx.Client, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    r = c.post(f"{path}/check-status", json=body, headers=headers, timeout=90)
    assert r.status_code == 200, r.text
    return r


def _without_extra(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "generationStatus"}


def _metrics(server: Server, *names: str) -> list[float]:
    """The metrics' values, from one scrape."""
    with server.client(METRICS_TOKEN) as c:
        r = c.get("/metrics")
    assert r.status_code == 200, r.text
    samples = [s for f in text_string_to_metric_families(r.text) for s in f.samples]
    return [sum(s.value for s in samples if s.name == name) for name in names]


def _metric(server: Server, name: str) -> float:
    return _metrics(server, name)[0]


def _assert_ordered(events: list[Event]) -> None:
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), ids  # strictly increasing
    assert all(e["event"] == "status" for e in events)
    assert all(e["data"]["status"] not in ("completed", "failed") for e in events[:-1]), events
    progress = [e["data"].get("progress", 0) for e in events if e["data"]["status"] != "failed"]
    assert progress == sorted(progress), progress


# -- streams ----------------------------------------------------------------------------------------------
def test_an_image_streams_to_completion_then_closes(live: Server) -> None:
    image_streams_to_completion(live)


def image_streams_to_completion(server: Server) -> None:
    """Also run on PostgreSQL (test_events_postgres.py)."""
    account = server.new_account(100)
    with account.client() as c:
        generation_id = _image(c, "a lighthouse [sandbox:slow=1.2]")
        status, events, closed = _events(c, generation_id)
        assert status == 200 and closed
        _assert_ordered(events)
        assert len(events) >= 3, events  # progress in steps, then the end
        last = events[-1]["data"]
        assert last["status"] == "completed" and last["imageUrl"] and last["progress"] == 100
        assert last["generationStatus"] == "completed"
        # The event's data is the check-status answer (plus generationStatus)
        assert _without_extra(last) == _check(c, IMAGE, {"generationId": generation_id}).json()
        # Reconnecting once the terminal event was seen: 204, nothing more will come
        assert _events(c, generation_id, last_id=events[-1]["id"])[0] == 204
        # Without Last-Event-ID an ended generation answers its terminal state at once
        status, again, closed = _events(c, generation_id)
        assert status == 200 and closed and [e["data"] for e in again] == [events[-1]["data"]]


def test_a_two_shot_video_streams_until_joined(live: Server) -> None:
    account = live.new_account(100)
    with account.client() as c:
        accepted = _video(c, ["one [sandbox:slow=0.5]", "two [sandbox:slow=1]"])
        generation_id = accepted["generationId"]
        status, events, closed = _events(c, generation_id)
        assert status == 200 and closed
        _assert_ordered(events)
        assert len(events) >= 3, events
        last = events[-1]["data"]
        assert last["status"] == "completed" and last["concatenatedVideoUrl"], last
        assert [s["status"] for s in last["shots"]] == ["completed"] * 2
        assert _without_extra(last) == _check(c, VIDEO, {"generationId": generation_id}).json()
        # every shot done while the concatenation is pending: still processing, as check-status says
        before = [e["data"] for e in events[:-1]]
        assert all(d["status"] == "processing" and d["generationStatus"] != "completed" for d in before)


def test_a_client_that_resumes_misses_no_terminal_event(live: Server) -> None:
    account = live.new_account(100)
    with account.client() as c:
        generation_id = _image(c, "resumed [sandbox:slow=2]")
        status, first, closed = _events(c, generation_id, stop_after=1)  # then the connection drops
        assert status == 200 and not closed and first[0]["data"]["status"] != "completed"
        seen = first[0]["id"]
        time.sleep(0.5)  # progress goes on while disconnected
        status, rest, closed = _events(c, generation_id, last_id=seen)
        assert status == 200 and closed
        assert rest and all(e["id"] > seen for e in rest), rest  # nothing older than the id
        _assert_ordered(first + rest)
        assert rest[-1]["data"]["status"] == "completed"
        # A resume after the generation ended, from an id before its end: the terminal event at once
        status, late, closed = _events(c, generation_id, last_id=seen)
        assert status == 200 and closed and [e["id"] for e in late] == [rest[-1]["id"]]


def test_a_canceled_generation_shows_canceled(live: Server) -> None:
    account = live.new_account(100)
    with account.client() as c:
        generation_id = _image(c, f"never finished {SLOW}")
        _, first, _ = _events(c, generation_id, stop_after=1)
        assert first[0]["data"]["generationStatus"] in ("pending", "generating")
        r = c.post(f"/api/generations/{generation_id}/cancel")
        assert r.status_code == 200, r.text
        status, events, closed = _events(c, generation_id, last_id=first[0]["id"])
        assert status == 200 and closed
        last = events[-1]["data"]
        # check-status's words stay the pages' (failed, "Canceled"); the event says canceled
        assert last["status"] == "failed" and last["error"] == "Canceled" and last["success"] is False
        assert last["generationStatus"] == "canceled"
        assert c.get(f"/api/generations/{generation_id}").json()["status"] == "canceled"


def test_a_last_event_id_past_the_end_closes_the_stream_when_it_ends(live: Server) -> None:
    account = live.new_account(100)
    with account.client() as c, ThreadPoolExecutor(1) as pool:
        generation_id = _image(c, f"bogus id {SLOW}")
        before = _metric(live, "nanogen_event_streams")
        following = pool.submit(_events, c, generation_id, 10**12)
        wait_for(lambda: _metric(live, "nanogen_event_streams") > before)
        assert c.post(f"/api/generations/{generation_id}/cancel").status_code == 200
        status, events, closed = following.result(timeout=60)
        # Nothing newer than the id: closed at the end without an event (204 had it ended before the
        # stream started: a stream of an earlier test may have closed just then).
        assert status in (200, 204) and events == [] and closed


def test_a_canceled_shot_of_a_running_video(live: Server) -> None:
    account = live.new_account(100)
    with account.client() as c:
        accepted = _video(c, [f"kept {SLOW}", f"cut {SLOW}"])
        generation_id = accepted["generationId"]
        assert c.post(f"/api/generations/{generation_id}/cancel", json={"shotIds": ["s1"]}).status_code == 200
        _, events, closed = _events(c, generation_id, stop_after=1)
        data = events[0]["data"]
        assert not closed and data["status"] == "processing" and data["generationStatus"] == "generating"
        assert data["shots"][1]["status"] == "failed" and data["shots"][1]["error"] == "Canceled"
        assert c.post(f"/api/generations/{generation_id}/cancel").status_code == 200
        _, events, closed = _events(c, generation_id, last_id=events[0]["id"])
        assert closed and events[-1]["data"]["status"] == "failed"
        assert events[-1]["data"]["generationStatus"] == "canceled"


def test_who_may_follow_a_generation(live: Server) -> None:
    owner, other = live.new_account(100), live.new_account(100)
    with owner.client() as c:
        generation_id = _image(c, "mine [sandbox:slow=0]")
    with other.client() as c:
        r = c.get(f"/api/generations/{generation_id}/events")
        assert_envelope(r, 404, "NOT_FOUND")  # another account's: as an unknown one
        assert_envelope(c.get("/api/generations/gen_unknown/events"), 404, "NOT_FOUND")
    with live.client("ng_not-a-key") as c:
        assert_envelope(c.get(f"/api/generations/{generation_id}/events"), 401, "LOGIN_REQUIRED")
    with live.client() as c:
        assert_envelope(c.get(f"/api/generations/{generation_id}/events"), 401, "LOGIN_REQUIRED")
        r = c.post(
            f"{IMAGE}/check-status", json={"generationId": generation_id}, headers={"Prefer": "wait=5"}
        )
        assert_envelope(r, 401, "LOGIN_REQUIRED")
    with other.client() as c:
        r = c.post(
            f"{IMAGE}/check-status", json={"generationId": generation_id}, headers={"Prefer": "wait=5"}
        )
        assert_envelope(r, 403, "FORBIDDEN")  # as without Prefer


# -- Prefer: wait --------------------------------------------------------------------------------------------
def test_prefer_wait_answers_when_the_generation_ends(live: Server) -> None:
    account = live.new_account(100)
    with account.client() as c:
        generation_id = _image(c, "waited for [sandbox:slow=1]")
        r = _check(c, IMAGE, {"generationId": generation_id}, Prefer="wait=60")
        assert r.json()["status"] == "completed" and r.headers["Preference-Applied"] == "wait=60"

        accepted = _video(c, ["a [sandbox:slow=0.5]"])
        r = _check(c, VIDEO, {"generationId": accepted["generationId"]}, Prefer="wait=60")
        assert r.json()["status"] == "completed" and r.json()["shots"][0]["videoUrl"]
        assert r.headers["Preference-Applied"] == "wait=60"

        # By task ids, some shots of a video that goes on: the answer when those shots ended
        accepted = _video(c, ["quick [sandbox:slow=0.5]", f"slow {SLOW}"])
        refs = [{"shotId": s["shotId"], "taskId": s["taskId"]} for s in accepted["shots"]]
        r = _check(c, VIDEO, {"taskIds": refs[:1]}, Prefer="wait=60")
        assert r.json()["status"] == "completed" and r.json()["shots"][0]["videoUrl"]
        c.post(f"/api/generations/{accepted['generationId']}/cancel")


def test_prefer_wait_answers_the_current_state_after_n_seconds(live: Server) -> None:
    account = live.new_account(100)
    with account.client() as c:
        generation_id = _image(c, f"too slow {SLOW}")
        started = time.monotonic()
        r = _check(c, IMAGE, {"generationId": generation_id}, Prefer="wait=1")
        assert time.monotonic() - started >= 0.9  # it did wait (no upper bound: a loaded machine)
        assert r.json()["status"] in ("pending", "generating") and r.headers["Preference-Applied"] == "wait=1"
        assert r.json() == _check(c, IMAGE, {"generationId": generation_id}).json()

        accepted = _video(c, [f"slow {SLOW}"])
        r = _check(c, VIDEO, {"generationId": accepted["generationId"]}, Prefer="respond-async, wait=1")
        assert r.json()["status"] == "processing" and r.headers["Preference-Applied"] == "wait=1"
        for gid in (generation_id, accepted["generationId"]):
            c.post(f"/api/generations/{gid}/cancel")


def test_without_prefer_nothing_changes(live: Server) -> None:
    account = live.new_account(100)
    with account.client() as c:
        generation_id = _image(c, f"plain {SLOW}")
        for headers in ({}, {"Prefer": "return=minimal"}, {"Prefer": "wait=soon"}, {"Prefer": "wait=-1"}):
            r = _check(c, IMAGE, {"generationId": generation_id}, **headers)
            assert "Preference-Applied" not in r.headers and r.json()["status"] in ("pending", "generating")
        c.post(f"/api/generations/{generation_id}/cancel")
        # an ended generation answers at once, even with a long wait; past 60 s it is clamped to 60
        r = _check(c, IMAGE, {"generationId": generation_id}, Prefer="wait=3600")
        assert r.json()["status"] == "failed" and r.headers["Preference-Applied"] == "wait=60"


# -- the SDK -------------------------------------------------------------------------------------------------
def test_the_sdk_follows_events_and_waits(live: Server) -> None:
    account = live.new_account(100)
    with Client(account.key, live.base_url) as client:
        image = client.images.generate("sdk [sandbox:slow=0.5]")
        statuses = list(client.events(image.id))
        assert statuses[-1]["status"] == "completed" and statuses[-1]["generationStatus"] == "completed"
        assert client.images.get(image.id).status(wait=30).status == "completed"
        video = client.videos.generate(["sdk shot [sandbox:slow=0.2]"])
        assert video.status(wait=30).status == "completed"

    async def follow() -> list[dict[str, Any]]:
        async with AsyncClient(account.key, live.base_url) as client:
            image = await client.images.generate("async sdk [sandbox:slow=0.5]")
            return [s async for s in client.events(image.id)]

    statuses = asyncio.run(follow())
    assert statuses[-1]["status"] == "completed"


# -- the watcher's cost -------------------------------------------------------------------------------------
def test_the_watcher_reads_once_per_tick_whatever_the_number_of_streams(live: Server) -> None:
    streams, generations = 200, 10
    account = live.new_account(1000)
    with account.client() as c:
        ids = [_image(c, f"idle {i} {SLOW}") for i in range(generations)]

    async def hold() -> tuple[float, float]:
        opened = asyncio.Event()
        connected = 0
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        headers = {"Authorization": f"Bearer {account.key}"}
        async with httpx.AsyncClient(base_url=live.base_url, headers=headers, limits=limits, timeout=60) as h:

            async def one(generation_id: str) -> None:
                nonlocal connected
                async with h.stream("GET", f"/api/generations/{generation_id}/events") as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data:"):
                            connected += 1
                            if connected == streams:
                                opened.set()
                            await asyncio.sleep(3600)  # idle until cancelled

            tasks = [asyncio.create_task(one(ids[i % generations])) for i in range(streams)]
            try:
                await asyncio.wait_for(opened.wait(), OUTCOME_WAIT_S)
                assert await asyncio.to_thread(_metric, live, "nanogen_event_streams") == streams
                ticks, queries = await asyncio.to_thread(_counters, live)
                await asyncio.sleep(1.5)
                ticks2, queries2 = await asyncio.to_thread(_counters, live)
                return ticks2 - ticks, queries2 - queries
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks, return_exceptions=True)

    ticks, queries = asyncio.run(hold())
    assert ticks >= 3, ticks
    # One statement per tick for all 200 streams (10 generations), two more when one moved (a task
    # starting); reading per stream would be 200 a tick.
    assert ticks - 1 <= queries <= ticks + 2 * generations, (ticks, queries)
    wait_for(lambda: _metric(live, "nanogen_event_streams") == 0)
    # Nothing followed: the watcher stops ticking.
    idle = _metric(live, "nanogen_watch_ticks_total")
    time.sleep(0.5)
    assert _metric(live, "nanogen_watch_ticks_total") == idle
    with account.client() as c:
        for generation_id in ids:
            c.post(f"/api/generations/{generation_id}/cancel")


def _counters(server: Server) -> tuple[float, float]:
    ticks, queries = _metrics(server, "nanogen_watch_ticks_total", "nanogen_watch_queries_total")
    return ticks, queries


def test_the_sdk_resumes_a_dropped_stream_with_last_event_id() -> None:
    """No server: httpx's MockTransport plays one that drops the stream after each event."""
    sent: list[str | None] = []
    states = [("3", "generating", 40), ("7", "generating", 80), ("9", "completed", 100)]

    def handler(request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        sent.append(last)
        if last == "9":
            return httpx.Response(204)
        after = [s for s in states if last is None or int(s[0]) > int(last)]
        event_id, status, progress = after[0]
        data = json.dumps({"status": status, "progress": progress})
        return httpx.Response(200, text=f": hello\n\nid: {event_id}\nevent: status\ndata: {data}\n\n")

    with Client("ng_test", "http://nanogen.invalid", transport=httpx.MockTransport(handler)) as client:
        client._sleep = lambda seconds: None
        got = list(client.events("gen_1"))
    assert [(s["status"], s["progress"]) for s in got] == [(s[1], s[2]) for s in states]
    assert sent == [None, "3", "7"]  # each reconnection resumes after the last event received
