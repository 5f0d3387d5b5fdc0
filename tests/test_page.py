"""The web page in a real browser: upload, drag a box, click a result (Debian's Chromium,
driven by Playwright; skipped where there is no Chromium)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright import sync_api

from lookalike import Collection
from lookalike.server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")

# Headless, and quiet on a machine without internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def server(tmp_path: Path, photo_dir: Path, encoder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with Collection.create(tmp_path / "coll", encoder=encoder, regions="grid") as coll:
        coll.index_folder(photo_dir)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(tmp_path / "coll")
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    uvicorn_server.should_exit = True
    thread.join(10)


def test_upload_drag_a_box_and_click_a_result(server: str, photo_dir: Path) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(server)
        status = page.locator("#status")
        first = page.locator(".hit .meta").first

        page.set_input_files("#file", photo_dir / "chelsea.jpg")
        sync_api.expect(status).to_contain_text("6 results")
        sync_api.expect(first).to_contain_text("1. chelsea.jpg · 1.000")

        # A box over the left eye, dragged on the screen, arrives in the photo's pixels.
        shown = page.locator("#query").bounding_box()
        assert shown is not None
        scale = 451 / shown["width"]  # chelsea.jpg is 451 x 300
        page.mouse.move(shown["x"] + 120 / scale, shown["y"] + 60 / scale)
        page.mouse.down()
        page.mouse.move(shown["x"] + 220 / scale, shown["y"] + 160 / scale, steps=4)
        page.mouse.up()
        sync_api.expect(status).to_contain_text("the box")
        box = [int(v) for v in status.inner_text().rsplit(" ", 1)[1].split(",")]
        assert all(abs(a - b) <= 2 for a, b in zip(box, (120, 60, 220, 160), strict=True))
        sync_api.expect(first).to_contain_text("chelsea.jpg")
        assert page.locator(".hit").first.locator(".box").count() == 1  # the region matched

        # A result becomes the query: more like it, itself left out.
        page.locator(".hit", has_text="coffee.jpg").click()
        sync_api.expect(status).to_contain_text("5 results")
        sync_api.expect(status).to_contain_text("more like coffee.jpg")
        assert "coffee.jpg" not in page.locator("#results").inner_text()
        assert page.locator("#error").inner_text() == ""

        # A file that is no picture: the server's one-line message, no broken image.
        (photo_dir / "notes.jpg").write_text("not an image")
        page.set_input_files("#file", photo_dir / "notes.jpg")
        sync_api.expect(page.locator("#error")).to_have_text(
            "notes.jpg: not an image file, or a format Pillow cannot read")
        sync_api.expect(page.locator("#stage")).to_be_hidden()
        browser.close()
