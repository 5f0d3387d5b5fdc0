"""The HTTP API over a collection, through FastAPI's test client (no network)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike import Collection
from lookalike.server import app as server_app
from lookalike.server import create_app


@pytest.fixture()
def client(tmp_path: Path, photo_dir: Path, encoder) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with Collection.create(tmp_path / "coll", encoder=encoder) as coll:
        coll.index_folder(photo_dir)
    with TestClient(create_app(tmp_path / "coll")) as test_client:
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
    with Collection.open(tmp_path / "coll") as other:  # as `lookalike index` would
        other._encoder = encoder
        other.index_folder(photo_dir)
    assert client.get("/api/info").json()["images"] == 7
    top = client.post("/api/search", files=_upload(newcomer)).json()["hits"][0]
    assert top["id"] == newcomer.name and top["score"] > 0.99


def test_the_page_has_its_controls(client: TestClient) -> None:
    page = client.get("/").text
    for control in ('id="file"', 'id="stage"', 'id="results"', "api/search", "pointerdown"):
        assert control in page
