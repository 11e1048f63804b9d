"""The Google engine's calls made by a child process (process_http.py): what the child is, and what
happens when it dies, is closed, is dropped, or outlives a crash. The answers and errors themselves,
the same as the in-process loop's, are tested for both in test_google_transport.py."""

from __future__ import annotations

import base64
import gc
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from tests.conftest import wait_for
from tests.engines.google_support import google_server
from tests.engines.scripted_server import ScriptedServer, answer
from tests.fakes.google_server import API_KEY, FakeGoogle, png

from nanogen.engines.google.calls import UNSENT
from nanogen.engines.google.engine import GoogleEngine
from nanogen.engines.google.image_answer import Answer, read_in_http_process, write_png
from nanogen.engines.google.images import ImagesRest
from nanogen.engines.google.process_http import CHILD_NAME, ProcessHttp
from nanogen.engines.google.transport import READ, SPOOL_FROM_BYTES, LoopHttp, Read
from nanogen.errors import EngineError
from nanogen.settings import Settings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture
def http() -> Iterator[ProcessHttp]:
    client = ProcessHttp(limit=4)
    yield client
    client.close()


def child_pid(http: ProcessHttp) -> int:
    process = http._link.process
    assert process is not None and process.pid is not None, "a child was started"
    return process.pid


def stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command's name: [0] the state, [1] the parent's pid."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie not yet reaped by whoever adopted it."""
    try:
        state = stat(pid)[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def test_calls_are_made_by_a_named_child_of_this_process(
    http: ProcessHttp, scripted: Callable[..., ScriptedServer]
) -> None:
    assert http._link.process is None, "nothing is started before the first call"
    server = scripted(answer(200, b"one"), answer(200, b"two"))
    assert http.request("GET", f"{server.url}/a", headers={}, timeout_s=10).content == b"one"
    pid = child_pid(http)
    assert pid != os.getpid()
    assert Path(f"/proc/{pid}/comm").read_text().strip() == CHILD_NAME
    assert int(stat(pid)[1]) == os.getpid(), "its parent is this process"
    assert http.request("GET", f"{server.url}/b", headers={}, timeout_s=10).content == b"two"
    assert child_pid(http) == pid, "one child serves every call"


def test_a_child_killed_mid_call_fails_that_call_and_the_next_call_starts_another(
    http: ProcessHttp, scripted: Callable[..., ScriptedServer]
) -> None:
    """The call was sent and may have been billed: a ReadError, which the retry policy repeats only
    for calls Google does not bill. Nothing hangs, and the transport carries on with a new child."""
    held = threading.Event()

    def never(conn: object) -> None:
        held.wait(30)

    server = scripted(never)
    outcome: list[BaseException | httpx.Response] = []

    def call() -> None:
        try:
            outcome.append(http.request("POST", f"{server.url}/gen", headers={}, content=b"{}", timeout_s=30))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(lambda: server.requests or None, 10)
    first = child_pid(http)
    os.kill(first, signal.SIGKILL)
    caller.join(10)
    held.set()
    [error] = outcome
    assert isinstance(error, httpx.ReadError) and not isinstance(error, UNSENT), error
    later = scripted(answer(200, b"again"))
    assert http.request("GET", f"{later.url}/x", headers={}, timeout_s=10).content == b"again"
    assert child_pid(http) != first


def test_close_ends_the_child_also_one_never_used_and_a_dropped_client_ends_it_too(
    scripted: Callable[..., ScriptedServer],
) -> None:
    server = scripted(answer(200, b"a"), answer(200, b"b"))
    closed = ProcessHttp(limit=2)
    assert closed.request("GET", f"{server.url}/x", headers={}, timeout_s=10).content == b"a"
    pid = child_pid(closed)
    closed.close()
    assert gone(pid)
    closed.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        closed.request("GET", f"{server.url}/x", headers={}, timeout_s=5)

    started = ProcessHttp(limit=2)
    started.start()  # a child started ahead and never used
    pid = child_pid(started)
    started.close()
    assert gone(pid)

    dropped = ProcessHttp(limit=2)
    assert dropped.request("GET", f"{server.url}/y", headers={}, timeout_s=10).content == b"b"
    pid = child_pid(dropped)
    del dropped
    gc.collect()
    wait_for(lambda: gone(pid) or None, 10)


def test_the_child_exits_when_its_parent_is_killed(
    scripted: Callable[..., ScriptedServer], tmp_path: Path
) -> None:
    """``kill -9`` runs no shutdown code: the child reads the end of its pipe and exits."""
    server = scripted(answer(200, b"ok"))
    script = textwrap.dedent(
        f"""
        import sys, time
        from nanogen.engines.google.process_http import ProcessHttp
        http = ProcessHttp(limit=2)
        assert http.request("GET", "{server.url}/x", headers={{}}, timeout_s=10).content == b"ok"
        print(http._link.process.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert not gone(pid)
    finally:
        parent.kill()
        parent.wait(10)
    wait_for(lambda: gone(pid) or None, 10)


def test_spooled_answers_left_by_a_dead_child_are_removed_by_the_next(
    scripted: Callable[..., ScriptedServer], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(finished.stdout)  # exited and reaped: no process has this pid now (barring reuse)
    orphan = spool / f"{CHILD_NAME}-{dead}-0"
    orphan.write_bytes(b"an answer nobody took")
    live = spool / f"{CHILD_NAME}-{os.getpid()}-0"  # a live process's: not touched
    live.write_bytes(b"in use")
    other = spool / "job-scratch"
    other.write_bytes(b"not the child's")
    server = scripted(answer(200, b"{}"))
    http = ProcessHttp(limit=2, spool_dir=spool)
    try:
        http.request("POST", f"{server.url}/gen", headers={}, timeout_s=10, spool=True)
    finally:
        http.close()
    assert sorted(p.name for p in spool.iterdir()) == sorted([live.name, other.name])


def png_of(width: int, height: int, seed: int) -> bytes:
    """A PNG of noise (it does not compress: about width x height x 3 bytes)."""
    return png(Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3)))


def image_answer_json(draft: bytes, final: bytes) -> bytes:
    """Google's answer: a thought's draft image, then the final one."""

    def part(png: bytes, **more: object) -> dict[str, object]:
        return {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode()}, **more}

    candidate = {"content": {"parts": [part(draft, thought=True), part(final)]}, "finishReason": "STOP"}
    return json.dumps({"candidates": [candidate]}).encode()


def test_a_reader_reads_the_answer_in_the_child_and_hands_over_the_image(
    scripted: Callable[..., ScriptedServer], tmp_path: Path
) -> None:
    """The image answer is read where the call was made: the worker gets the parts without their
    images, and the final image with them if it is small, else as a file of the child's (named so
    that a later child removes it if this one dies), which it moves into place; nothing else is
    left in the spool folder."""
    spool = tmp_path / "spool"
    spool.mkdir()
    small, medium, large = png_of(32, 32, 1), png_of(250, 250, 2), png_of(400, 300, 3)
    answers = [
        image_answer_json(png_of(8, 8, 4), small),  # read from memory, the image sent back
        image_answer_json(png_of(200, 200, 5), medium),  # spooled, the image sent back
        image_answer_json(png_of(8, 8, 6), large),  # spooled, the image in a file
    ]
    assert len(answers[0]) < SPOOL_FROM_BYTES < len(answers[1])
    assert len(medium) < SPOOL_FROM_BYTES < len(large)
    server = scripted(*(answer(200, body) for body in answers))
    http = ProcessHttp(limit=2, spool_dir=spool)
    try:
        for n, expected in enumerate([small, medium, large]):
            response = http.request(
                "POST", f"{server.url}/gen", headers={}, json={}, timeout_s=10, spool=True,
                read=read_in_http_process,
            )  # fmt: skip
            read = response.extensions[READ]
            assert isinstance(read, Read) and isinstance(read.value, Answer)
            assert [p.data for p in read.value.parts] == [None, None], "the parts carry no image"
            if len(expected) < SPOOL_FROM_BYTES:
                assert read.file is None and read.value.final_png == expected
            else:
                assert read.file is not None and read.value.final_png is None
                assert read.file.path.parent == spool
                assert read.file.path.name.startswith(f"{CHILD_NAME}-{child_pid(http)}-")
            dest = tmp_path / f"image{n}.png"
            write_png(ImagesRest.answer(response), dest)
            assert dest.read_bytes() == expected
            assert list(spool.iterdir()) == [], "the spooled answer is gone and the image moved"
    finally:
        http.close()


def test_a_read_answer_fails_as_one_read_here_and_leaves_nothing_behind(
    scripted: Callable[..., ScriptedServer], tmp_path: Path
) -> None:
    """JSON that is not JSON: EngineError, as for an answer read in the worker. An image that does
    not decode: said when the job writes it. An error status: not read, the caller reads it. An
    image never taken by its job: removed when the response is dropped."""
    spool = tmp_path / "spool"
    large = png_of(400, 300, 5)
    cut_short = image_answer_json(large, large[: len(large) // 2])
    server = scripted(
        answer(200, b"{not json" + b" " * SPOOL_FROM_BYTES),
        answer(200, cut_short),
        answer(429, b'{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}'),
        answer(200, image_answer_json(large, large)),
    )
    http = ProcessHttp(limit=2, spool_dir=spool)

    def call() -> httpx.Response:
        return http.request(
            "POST",
            f"{server.url}/gen",
            headers={},
            json={},
            timeout_s=10,
            spool=True,
            read=read_in_http_process,
        )

    try:
        with pytest.raises(EngineError, match=r"malformed response \(not JSON\)"):
            call()
        with pytest.raises(EngineError, match="the image does not decode"):
            write_png(ImagesRest.answer(call()), tmp_path / "never.png")
        refused = call()
        assert refused.status_code == 429 and READ not in refused.extensions
        assert b"RESOURCE_EXHAUSTED" in refused.content
        dropped = call()
        assert isinstance(dropped.extensions[READ], Read) and dropped.extensions[READ].file is not None
        assert len(list(spool.iterdir())) == 1
        del dropped
        gc.collect()
        assert list(spool.iterdir()) == []
        assert not (tmp_path / "never.png").exists()
    finally:
        http.close()


def test_the_engine_calls_from_a_child_where_it_may_use_two_cpus(fake: FakeGoogle, tmp_path: Path) -> None:
    def engine(**values: object) -> GoogleEngine:
        settings = Settings(
            home=tmp_path,
            engine_images="google",
            google_base_url=fake.base_url,
            google_api_key=API_KEY,
            **values,
        )
        return GoogleEngine(settings)

    made = [engine(), engine(google_http_process=False), engine(google_http_process=True)]
    try:
        default, off, on = (type(e._rest) for e in made)
        assert off is LoopHttp and on is ProcessHttp
        assert default is (ProcessHttp if len(os.sched_getaffinity(0)) > 1 else LoopHttp)
    finally:
        for e in made:
            e._rest.close()


def test_on_one_cpu_the_default_keeps_the_calls_in_the_worker() -> None:
    """The child's gain is the other core; a process bound to one CPU (taskset, a cgroup's cpuset)
    keeps the loop on a thread of its own. Checked in a process bound so, not by pretending."""
    script = textwrap.dedent(
        """
        import os
        from nanogen.engines.google.engine import calls_from_a_child
        from nanogen.settings import Settings
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        print(calls_from_a_child(Settings()), calls_from_a_child(Settings(google_http_process=True)))
        """
    )
    bound = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert bound.stdout.split() == ["False", "True"], bound.stderr


def test_a_worker_starts_its_http_child_when_it_launches_and_images_go_through_it(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    """The child starts before any request (a burst's first calls do not wait for it), an image
    generated through the whole server comes back through it, and it ends with the server."""
    from tests.engines.google_support import generate_image, open_png, wait_image

    def http_children(pid: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int(stat(int(entry.name))[1])
                    name = Path(f"{entry}/comm").read_text().strip()
                except (OSError, IndexError, ValueError):
                    continue
                if parent == pid and name == CHILD_NAME:
                    found.append(int(entry.name))
        return found

    with google_server(tmp_path, fake, NANOGEN_GOOGLE_HTTP_PROCESS="true") as server:
        assert server.process is not None
        [child] = wait_for(lambda: http_children(server.process.pid), 20)  # type: ignore[union-attr]
        account = server.new_account(100)
        accepted = generate_image(
            account,
            {"prompt": "A lighthouse", "mode": "generate", "aspectRatio": "4:3", "imageQuality": "1K"},
        )
        final, _ = wait_image(account, accepted["generationId"])
        assert final["status"] == "completed", final
        with account.client() as c:
            png = c.get(final["imageUrl"]).content
        assert open_png(png).size[0] > 0
        assert http_children(server.process.pid) == [child], "the same child made the call"
    wait_for(lambda: gone(child) or None, 20)


def test_the_child_outlives_signals_and_ends_with_its_parents_exit(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """Ctrl-C reaches a terminal's whole process group, and a service manager's SIGTERM every process of
    the unit: the child ignores both and serves the worker's calls while the worker finishes its jobs,
    then ends with the worker's exit (its exit handlers do not wait on a child that waits on them)."""
    server = scripted(answer(200, b"before"), answer(200, b"after"))
    script = textwrap.dedent(
        f"""
        import sys
        from nanogen.engines.google.process_http import ProcessHttp
        http = ProcessHttp(limit=2)
        assert http.request("GET", "{server.url}/x", headers={{}}, timeout_s=10).content == b"before"
        print(http._link.process.pid, flush=True)
        sys.stdin.readline()  # the test has signalled the child
        print(http.request("GET", "{server.url}/y", headers={{}}, timeout_s=10).content.decode(), flush=True)
        """  # exits without closing the client
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdin is not None and parent.stdout is not None
    pid = int(parent.stdout.readline())
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    for number in (signal.SIGINT, signal.SIGTERM):
        assert ignored & (1 << (number - 1)), f"{number.name} is ignored"
        os.kill(pid, number)
    parent.stdin.write("go\n")
    parent.stdin.flush()
    assert parent.stdout.readline().strip() == "after"
    assert parent.wait(30) == 0, "the parent's exit did not hang on its child"
    wait_for(lambda: gone(pid) or None, 10)
