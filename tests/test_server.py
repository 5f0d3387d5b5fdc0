"""The HTTP API over a collection, through FastAPI's test client and (for `lookalike serve`)
a real server."""

from __future__ import annotations

import io
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike import Collection
from lookalike.server import app as server_app
from lookalike.server import create_app

# Names a file may have that a URL path cannot hold as they are.
ODD_NAMES = ["a\nb.jpg", "100% #1?.jpg", "café ü.jpg", "x+y&z=;.jpg"]


@pytest.fixture()
def coll_path(tmp_path: Path, photo_dir: Path, encoder) -> Path:  # type: ignore[no-untyped-def]
    with Collection.create(tmp_path / "coll", encoder=encoder) as coll:
        coll.index_folder(photo_dir)
    return tmp_path / "coll"


@pytest.fixture()
def client(coll_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(coll_path)) as test_client:
        yield test_client


def _upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


def test_search_by_upload_crop_and_indexed_id(client: TestClient, photo_dir: Path) -> None:
    info = client.get("/api/info").json()
    assert info["images"] == 6 and info["encoder"] == "efficientnet_lite0"

    chelsea = photo_dir / "chelsea.jpg"
    hits = client.post("/api/search", files=_upload(chelsea), data={"k": "3"}).json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == "chelsea.jpg" and hits[0]["score"] > 0.99
    assert (hits[0]["width"], hits[0]["height"]) == Image.open(chelsea).size
    assert hits[0]["url"] == "api/images/chelsea.jpg" and "path" not in hits[0]  # no server paths

    # A crop, verified: its source first, with the box where the crop lies.
    body = client.post("/api/search", files=_upload(chelsea),
                       data={"crop": "120,40,320,240", "verify": "6"}).json()
    top = body["hits"][0]
    assert top["id"] == "chelsea.jpg" and top["inliers"] > 20
    assert all(abs(a - b) <= 8 for a, b in zip(top["box"], (120, 40, 320, 240), strict=True))

    # More like an indexed image leaves it out; a part of an indexed image finds it.
    like = client.post("/api/search", data={"like": "sub/coins.jpg", "k": "10"}).json()["hits"]
    assert len(like) == 5 and "sub/coins.jpg" not in {h["id"] for h in like}
    part = client.post("/api/search", data={"like": "sub/coins.jpg", "crop": "0,0,200,150",
                                            "verify": "6"}).json()["hits"]
    assert part[0]["id"] == "sub/coins.jpg"


def test_bad_requests_get_one_clear_message(client: TestClient, photo_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def error(response):  # type: ignore[no-untyped-def]
        return response.status_code, response.json()["detail"]

    junk = {"image": ("notes.jpg", b"not an image", "image/jpeg")}
    assert error(client.post("/api/search", files=junk)) == (
        400, "notes.jpg: not an image file, or a format Pillow cannot read")
    chelsea = _upload(photo_dir / "chelsea.jpg")
    status, detail = error(client.post("/api/search", files=chelsea,
                                       data={"crop": "0,0,9999,9999"}))
    assert status == 400 and detail.startswith("chelsea.jpg: crop box 0,0,9999,9999")
    assert error(client.post("/api/search", files=chelsea, data={"crop": "1,2"}))[0] == 400
    assert error(client.post("/api/search", data={"like": "gone.jpg"})) == (
        404, "gone.jpg: no such image in the collection")
    assert error(client.post("/api/search"))[0] == 400
    assert client.post("/api/search", files=chelsea, data={"k": "0"}).status_code == 422
    monkeypatch.setattr(server_app, "MAX_UPLOAD_BYTES", 1000)
    assert error(client.post("/api/search", files=chelsea))[0] == 413
    # The collection is untouched by all that.
    assert client.get("/api/info").json()["images"] == 6


def test_images_are_served_by_id_only(client: TestClient, photo_dir: Path) -> None:
    response = client.get("/api/images/sub/coins.jpg", params={"size": 64})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(response.content)).size) == 64
    # Only indexed ids: nothing else on the server's disk can be asked for.
    assert client.get("/api/images/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/api/images/sub").status_code == 404
    (photo_dir / "chelsea.jpg").write_bytes(b"truncated")  # changed since it was indexed
    assert client.get("/api/images/chelsea.jpg").status_code == 410


def test_images_indexed_meanwhile_are_found_without_a_restart(
        client: TestClient, tmp_path: Path, photo_dir: Path, samples: list[Path],
        encoder) -> None:  # type: ignore[no-untyped-def]
    newcomer = samples[8]
    assert client.post("/api/search", files=_upload(newcomer)).json()["hits"][0]["id"] \
        != newcomer.name
    shutil.copy(newcomer, photo_dir / newcomer.name)
    with Collection.open(tmp_path / "coll", encoder=encoder) as other:  # as `index` would
        other.index_folder(photo_dir)
    assert client.get("/api/info").json()["images"] == 7
    top = client.post("/api/search", files=_upload(newcomer)).json()["hits"][0]
    assert top["id"] == newcomer.name and top["score"] > 0.99


def test_the_page_has_its_controls(client: TestClient) -> None:
    page = client.get("/").text
    for control in ('id="file"', 'id="stage"', 'id="results"', "api/search", "pointerdown"):
        assert control in page


def test_images_with_any_character_in_their_name_are_served(
        tmp_path: Path, samples: list[Path], encoder) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "odd"
    (root / "sub dir").mkdir(parents=True)
    for name, sample in zip(ODD_NAMES, samples, strict=False):
        shutil.copy(sample, root / name)
    shutil.copy(samples[5], root / "sub dir" / "a\n#?.jpg")
    shutil.copy(samples[6], os.fsdecode(bytes(root) + b"/latin-1 \xe9.jpg"))  # id: \xe9
    with Collection.create(tmp_path / "coll", encoder=encoder) as coll:
        coll.index_folder(root)
    with TestClient(create_app(tmp_path / "coll")) as client:
        hits = client.post("/api/search", data={"like": ODD_NAMES[0], "k": "10"}).json()["hits"]
        assert {h["id"] for h in hits} == {*ODD_NAMES[1:], "sub dir/a\n#?.jpg",
                                           "latin-1 \\xe9.jpg"}
        for hit in hits:  # as the page asks: the hit's url, then ?size=
            response = client.get(f"/{hit['url']}?size=64")
            assert response.status_code == 200, hit["id"]
            assert response.headers["content-type"] == "image/jpeg"
            assert max(Image.open(io.BytesIO(response.content)).size) == 64


def test_removed_files_are_still_found_but_their_images_are_gone(
        client: TestClient, photo_dir: Path) -> None:
    chelsea = _upload(photo_dir / "chelsea.jpg")
    shutil.rmtree(photo_dir)
    hits = client.post("/api/search", files=chelsea, data={"k": "3"}).json()["hits"]
    assert hits[0]["id"] == "chelsea.jpg"
    for hit in hits:
        response = client.get(f"/{hit['url']}")
        assert response.status_code == 410 and "no such file" in response.json()["detail"]


def _serve(coll: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "-c", str(coll),
                             "--port", str(port)], stderr=subprocess.PIPE, text=True)


def test_serve_on_a_taken_port_is_one_clear_error(coll_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with _serve(coll_path, port) as proc:
            _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert stderr == f"lookalike: error: 127.0.0.1:{port}: address already in use\n"


def test_serve_answers_over_http_on_the_port_it_names(coll_path: Path, photo_dir: Path,
                                                       samples: list[Path]) -> None:
    shutil.copy(samples[0], photo_dir / ODD_NAMES[0])  # through uvicorn's own URL decoding
    with Collection.open(coll_path) as coll:
        coll.index_folder(photo_dir)
    with _serve(coll_path, 0) as proc:  # port 0: the system picks one, the line names it
        assert proc.stderr is not None
        try:
            ready, _, _ = select.select([proc.stderr], [], [], 120)
            line = proc.stderr.readline() if ready else ""
            assert line.startswith(f"lookalike: serving {coll_path} on http://127.0.0.1:"), line
            url = line.split(" on ")[1].strip()
            assert not url.endswith(":0/")
            with urllib.request.urlopen(url + "api/info", timeout=30) as response:
                assert response.status == 200
            with urllib.request.urlopen(url + "api/images/a%0Ab.jpg?size=64",
                                        timeout=30) as response:
                assert response.headers["content-type"] == "image/jpeg"
        finally:
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in rest, rest


def _slow_verification(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    import time as clock

    import lookalike.collection

    def slow(query, hits, depth, found=None):  # type: ignore[no-untyped-def]
        clock.sleep(seconds)
        return hits

    monkeypatch.setattr(lookalike.collection, "verified", slow)


def test_a_slow_verified_search_does_not_hold_up_cheap_ones(
        coll_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time as clock

    _slow_verification(monkeypatch, 3.0)
    with TestClient(create_app(coll_path, workers=2)) as client:
        slow = threading.Thread(target=lambda: client.post(
            "/api/search", data={"like": "sub/coins.jpg", "verify": "5"}))
        slow.start()
        clock.sleep(0.3)
        start = clock.perf_counter()
        assert client.get("/api/info").status_code == 200
        assert client.post("/api/search", data={"like": "chelsea.jpg"}).status_code == 200
        assert clock.perf_counter() - start < 1.5 and slow.is_alive()
        slow.join()


def test_a_full_queue_answers_503_at_once_and_a_late_search_503(
        coll_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time as clock

    monkeypatch.setattr(server_app, "QUEUED_A_WORKER", 0)
    monkeypatch.setattr(server_app, "VERIFY_SECONDS", 1.0)
    _slow_verification(monkeypatch, 2.5)
    with TestClient(create_app(coll_path, workers=2)) as client:
        answers: list[int] = []
        first = threading.Thread(target=lambda: answers.append(client.post(
            "/api/search", data={"like": "sub/coins.jpg", "verify": "5"}).status_code))
        first.start()
        clock.sleep(0.3)
        busy = client.post("/api/search", data={"like": "chelsea.jpg", "verify": "5"})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        first.join()
        assert answers == [503]  # past its time limit
        clock.sleep(2.0)  # its thread finishes, and the pool takes calls again
        assert client.post("/api/search", data={"like": "chelsea.jpg"}).status_code == 200


def test_head_works_where_get_does_and_errors_echo_no_input(client: TestClient) -> None:
    assert client.head("/").status_code == 200
    assert client.head("/api/info").status_code == 200
    assert client.head("/api/images/chelsea.jpg").status_code == 200
    answer = client.post("/api/search", data={"like": "chelsea.jpg", "k": "<script>"})
    assert answer.status_code == 422 and "<script>" not in answer.text
    assert answer.json()["detail"].startswith("k: ")


def test_an_upload_over_the_limit_is_refused_before_it_is_read() -> None:
    import asyncio

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        while (await receive()).get("more_body"):  # reads everything, as a form parser does
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def call(headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        chunks_read = 0
        sent: list[dict] = []  # type: ignore[type-arg]

        async def receive():  # type: ignore[no-untyped-def]
            nonlocal chunks_read
            chunks_read += 1
            return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

        async def send(message):  # type: ignore[no-untyped-def]
            sent.append(message)

        limited = server_app.BodyLimit(app, limit=lambda: 2**20)
        asyncio.run(limited({"type": "http", "headers": headers}, receive, send))
        return sent[0]["status"], chunks_read

    assert call([(b"content-length", str(10 * 2**30).encode())]) == (413, 0)
    status, chunks = call([])  # streamed, no length said: stopped at the limit
    assert status == 413 and chunks == (2**20 + 65536) // 65536 + 1


def test_the_listening_socket_is_tcp_so_responses_are_not_held_back() -> None:
    """asyncio turns Nagle's algorithm off only on sockets that say they are TCP; without
    it every response on a kept-alive connection waited ~40 ms for a delayed ACK."""
    with server_app.bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        with client, accepted:
            assert accepted.proto == socket.IPPROTO_TCP


def test_parallel_searches_while_a_writer_commits_all_succeed(
        coll_path: Path, photo_dir: Path, samples: list[Path], encoder) -> None:  # type: ignore[no-untyped-def]
    """Searches on every worker thread while another process-like writer adds and removes
    images: each answers 200 with hits that exist, and the last commit is found."""
    import threading

    errors: list[str] = []
    stop = threading.Event()
    with TestClient(create_app(coll_path, workers=4)) as client:
        def searching() -> None:
            while not stop.is_set():
                answer = client.post("/api/search", data={"like": "chelsea.jpg", "k": "4"})
                if answer.status_code != 200 or not answer.json()["hits"]:
                    errors.append(f"{answer.status_code} {answer.text[:100]}")

        threads = [threading.Thread(target=searching) for _ in range(6)]
        for thread in threads:
            thread.start()
        with Collection.open(coll_path, encoder=encoder) as writer:
            for round_ in range(4):  # add one image, remove it again, add it back
                extra = photo_dir / f"extra-{round_}.jpg"
                shutil.copy(samples[6 + round_ % 3], extra)
                writer.index_folder(photo_dir)
                if round_ % 2:
                    extra.unlink()
                    writer.index_folder(photo_dir)
        stop.set()
        for thread in threads:
            thread.join()
        assert errors == []
        found = {h["id"] for h in client.post("/api/search", data={
            "like": "chelsea.jpg", "k": "20"}).json()["hits"]}
        with Collection.open(coll_path, encoder=encoder) as coll:
            assert found == set(coll.ids()) - {"chelsea.jpg"}
