"""Transient faults told apart from permanent ones: local storage whose folder is broken answers
StorageUnavailable (not NotADirectoryError, not "no such object"); a missing key under a healthy
folder is StorageNotFound; the filesystem broker waits out a missing queue folder; a worker's
beat file and its parent watch."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from spruce.common.queue import BrokerUnavailable, check_broker, enqueue, make_celery
from spruce.common.settings import Settings
from spruce.common.storage import LocalStorage, StorageNotFound, StorageUnavailable


def _break(folder: Path) -> None:
    """A file where the folder was: what a vanished mount or a bad deploy leaves."""
    shutil.rmtree(folder)
    folder.write_text("not a folder")


def test_local_storage_tells_missing_from_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    store = LocalStorage(root)
    assert not store.exists("jobs/j/head.json") and store.list("jobs/") == []  # nothing stored yet
    with pytest.raises(StorageUnavailable):  # a recorded object, and no folder at all: away
        store.open_stream("jobs/j/report.json")
    store.put_stream("jobs/j/report.json", io.BytesIO(b"{}"))
    store.check()
    assert not store.exists("jobs/j/nope")
    with pytest.raises(StorageNotFound):
        store.open_stream("jobs/j/nope")
    with pytest.raises(StorageNotFound):
        store.locate("jobs/j")  # a folder is not an object

    _break(root)
    for call in (
        lambda: store.put_stream("jobs/j/other.json", io.BytesIO(b"x")),
        lambda: store.open_stream("jobs/j/report.json"),
        lambda: store.locate("jobs/j/report.json"),
        lambda: store.exists("jobs/j/report.json"),
        lambda: store.download("jobs/j/report.json", tmp_path / "out"),
        lambda: store.list("jobs/"),
        lambda: store.delete_prefix("jobs/j/"),
        store.check,
    ):
        with pytest.raises(StorageUnavailable) as raised:
            call()
        assert str(tmp_path) not in str(raised.value)  # the message may reach a client: no path

    root.unlink()  # the folder comes back: everything works again
    root.mkdir()
    store.put_stream("jobs/j/report.json", io.BytesIO(b"{}"))
    assert b"".join(store.open_stream("jobs/j/report.json")) == b"{}"


def test_put_stream_cleanup_does_not_mask_the_fault(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "a")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "jobs").write_text("a file where a folder should be")
    with pytest.raises(StorageUnavailable, match="cannot store"):
        store.put_stream("jobs/j/x.bin", io.BytesIO(b"x"))


def test_filesystem_broker_waits_out_a_missing_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    producer = make_celery(settings)
    check_broker(settings, 1.0)
    queue = settings.broker_folder / "queue"
    moved = tmp_path / "moved"
    queue.rename(moved)
    with pytest.raises(OSError):
        check_broker(settings, 1.0)
    with pytest.raises(BrokerUnavailable) as raised:
        enqueue(producer, settings, "job_1")
    assert str(tmp_path) not in str(raised.value)
    with producer.connection_for_read() as conn:  # a consumer sees an empty queue, not a crash
        simple = conn.SimpleQueue(settings.queue)
        with pytest.raises(simple.Empty):
            simple.get(block=False)
        moved.rename(queue)
        enqueue(producer, settings, "job_2")
        message = simple.get(timeout=5)
        assert message.payload == ["job_2"] or message.headers["argsrepr"] == "['job_2']"
        message.ack()


def test_healthcheck_sees_a_fresh_beat_of_a_live_process(tmp_path: Path) -> None:
    from spruce.worker.healthcheck import AliveFile, alive, main

    folder = tmp_path / "alive"
    assert main(["--dir", str(folder)]) == 1
    beat = AliveFile(folder / f"{os.getpid()}.json", interval=0.05).start()
    try:
        assert alive(folder) == [os.getpid()]
        assert main(["--dir", str(folder)]) == 0
        assert alive(folder, max_age=10, now=time.time() + 60) == []  # stale
    finally:
        beat.stop()
    assert main(["--dir", str(folder)]) == 1  # removed at shutdown
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (folder / "x.json").write_text(f'{{"pid": {int(dead.stdout)}}}')
    assert alive(folder) == []  # a fresh file of a process that is gone


def test_a_supervised_process_dies_with_its_parent(tmp_path: Path) -> None:
    """The parent is killed with SIGKILL: its child, watching it, exits within a few seconds."""
    child = tmp_path / "child.pid"
    (tmp_path / "child.py").write_text(
        "import os, pathlib, sys, time\n"
        "from spruce.worker.supervised import watch_parent\n"
        "watch_parent()\n"
        "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    script = (
        "import os, subprocess, sys, time\n"
        "env = {**os.environ, 'SPRUCE_SUPERVISOR_PID': str(os.getpid())}\n"
        "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]], env=env, start_new_session=True)\n"
        "time.sleep(120)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "child.py"), str(child)], env=env)
    deadline = time.monotonic() + 60
    while not child.exists() and time.monotonic() < deadline:
        assert parent.poll() is None
        time.sleep(0.1)
    pid = int(child.read_text())
    assert _running(pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_transient_faults_on_any_route_are_503_with_retry_after(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy.exc import OperationalError

    from spruce.api.app import create_app

    app = create_app(Settings(data_dir=tmp_path))
    faults = {
        "broker": BrokerUnavailable("the broker did not take the message (OperationalError)"),
        "storage": StorageUnavailable("the artifact folder cannot store 'x': Not a directory"),
        "database": OperationalError("SELECT 1", {}, Exception(f"unable to open {tmp_path}/spruce.db")),
    }

    def failing(exc: Exception) -> Any:
        def route() -> None:
            raise exc

        return route

    for name, exc in faults.items():
        app.add_api_route(f"/test/{name}", failing(exc))
    client = TestClient(app, raise_server_exceptions=False)
    for name in faults:
        r = client.get(f"/test/{name}")
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert r.json()["error"]["code"] == f"{name}_unavailable" and str(tmp_path) not in r.text
