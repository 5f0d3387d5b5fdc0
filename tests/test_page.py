"""The web page in a real browser: upload, drag a box, click a result (Debian's Chromium,
driven by Playwright; skipped where there is no Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import uvicorn
from playwright import sync_api

from lookalike import Collection
from lookalike.encoders import Encoder
from lookalike.server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")

# Headless, and quiet on a machine without internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


SCREENSHOTS = Path(os.environ.get("LOOKALIKE_SCREENSHOTS",
                                  Path(__file__).resolve().parents[1] / "build" / "screenshots"))
ODD_NAMES = ["a\nb.jpg", "100% #1?.jpg", "café ü.jpg"]


@pytest.fixture()
def server(tmp_path: Path, photo_dir: Path, encoder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from PIL import Image

    for name in ODD_NAMES:
        shutil.copy(photo_dir / "coffee.jpg", photo_dir / "sub" / name)
    Image.new("RGB", (3, 2000), (200, 80, 40)).save(photo_dir / "sub" / "thin.png")
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


@pytest.fixture()
def page(server: str) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(server)
        yield page
        browser.close()


def snap(page: sync_api.Page, name: str) -> None:
    """A screenshot of the state, for a person to review (build/screenshots/)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def serious_violations(page: sync_api.Page) -> list[str]:
    """What axe-core finds of serious or critical impact (WCAG A and AA rules)."""
    from axe_playwright_python.sync_playwright import Axe

    found = Axe().run(page, options={"runOnly": ["wcag2a", "wcag2aa"]}).response["violations"]
    return [f"{v['id']}: {v['help']}" for v in found if v["impact"] in ("serious", "critical")]


def test_upload_drag_a_box_and_click_a_result(page: sync_api.Page, photo_dir: Path) -> None:
    status = page.locator("#status")
    first = page.locator(".hit .meta").first
    sync_api.expect(page.locator("#info")).to_contain_text("10 images · model efficientnet_lite0")

    page.set_input_files("#file", photo_dir / "chelsea.jpg")
    sync_api.expect(status).to_contain_text("10 results")
    sync_api.expect(first).to_contain_text("1. chelsea.jpg")
    sync_api.expect(first).to_contain_text("similarity 1.000")
    assert page.locator(".cut").count() <= 1
    snap(page, "results")
    assert serious_violations(page) == []

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
    assert [int(page.input_value(f"#{n}")) for n in ("x0", "y0", "x1", "y1")] == box
    sync_api.expect(first).to_contain_text("chelsea.jpg")
    assert page.locator(".hit").first.locator(".box").count() == 1  # the region matched
    snap(page, "part")

    # A result becomes the query: more like it, itself left out, the file box cleared.
    page.locator(".hit", has_text="coffee.jpg").first.click()
    sync_api.expect(status).to_contain_text("more like coffee.jpg")
    assert "1. coffee.jpg" not in page.locator("#results").inner_text()
    assert page.input_value("#file") == ""
    sync_api.expect(page.locator("#query-name")).to_have_text("Query: more like coffee.jpg")
    assert page.locator("#error").inner_text() == ""


def test_is_it_already_in_the_collection(page: sync_api.Page, photo_dir: Path) -> None:
    from PIL import Image

    page.set_input_files("#file", photo_dir / "chelsea.jpg")
    sync_api.expect(page.locator("#status")).to_contain_text("10 results")
    page.click("#copies-check")
    sync_api.expect(page.locator("#copies")).to_contain_text("the same file as chelsea.jpg")
    Image.open(photo_dir / "coffee.jpg").crop((100, 50, 350, 250)).save(
        photo_dir / "part.png")
    page.set_input_files("#file", photo_dir / "part.png")
    page.click("#copies-check")
    sync_api.expect(page.locator("#copies")).to_contain_text("a part of coffee.jpg (at ")
    snap(page, "copies")


def test_keyboard_alone_opens_results_and_sets_a_box(page: sync_api.Page,
                                                    photo_dir: Path) -> None:
    status = page.locator("#status")
    page.set_input_files("#file", photo_dir / "chelsea.jpg")
    sync_api.expect(status).to_contain_text("10 results")
    second = page.locator("button.hit").nth(1)
    name = second.locator(".name").inner_text().split(". ", 1)[1]
    second.focus()
    page.keyboard.press("Enter")
    sync_api.expect(status).to_contain_text(f"more like {name}")

    page.focus("#x0")  # the box typed in, field by field
    for field, value in zip(("x0", "y0", "x1", "y1"), ("10", "20", "110", "90"), strict=True):
        page.fill(f"#{field}", value)
    page.focus("#part-search")
    page.keyboard.press("Enter")
    sync_api.expect(status).to_contain_text("the box 10,20,110,90")
    page.fill("#x1", "999999")
    page.click("#part-search")
    sync_api.expect(page.locator("#error")).to_contain_text("Give a box inside the image")


def test_loading_cancelling_and_every_kind_of_failure(page: sync_api.Page,
                                                      photo_dir: Path) -> None:
    status, error, results = page.locator("#status"), page.locator("#error"), page.locator(
        "#results")
    page.set_input_files("#file", photo_dir / "chelsea.jpg")
    sync_api.expect(status).to_contain_text("10 results")

    # A slow answer: skeletons hold the thumbnails' places; a newer query replaces it.
    held: list[sync_api.Route] = []

    def hold_the_first(route: sync_api.Route) -> None:
        held.append(route) if not held else route.continue_()

    page.route("**/api/search", hold_the_first)
    page.set_input_files("#file", photo_dir / "coffee.jpg")
    sync_api.expect(page.locator(".skeleton")).to_have_count(12)
    sync_api.expect(page.locator("#results-section")).to_have_attribute("aria-busy", "true")
    snap(page, "loading")
    page.set_input_files("#file", photo_dir / "camera.jpg")
    sync_api.expect(status).to_contain_text("for camera.jpg")
    with suppress(sync_api.Error):  # the older answer arrives late (if at all): not shown
        held[0].continue_()
    page.wait_for_timeout(500)
    sync_api.expect(status).to_contain_text("for camera.jpg")
    page.unroute("**/api/search")

    failures = [
        (lambda route: route.abort(), "could not be reached"),
        (lambda route: route.fulfill(status=502, content_type="text/html",
                                     body="<html>Bad Gateway</html>"), "answered 502"),
        (lambda route: route.fulfill(status=503, content_type="application/json",
                                     body='{"detail": "queue full"}'), "busy"),
    ]
    for (handler, message), photo in zip(failures, ("chelsea.jpg", "coffee.jpg", "brick.jpg"),
                                         strict=True):
        page.route("**/api/search", handler)
        page.set_input_files("#file", photo_dir / photo)
        sync_api.expect(error).to_contain_text(message)
        assert results.inner_text() == "" and status.inner_text() == ""  # no stale results
        page.unroute("**/api/search")
    snap(page, "failure")

    # A file that is no picture: the server's one-line message, no results, no broken image.
    page.set_input_files("#file", photo_dir / "chelsea.jpg")
    sync_api.expect(status).to_contain_text("10 results")
    (photo_dir / "notes.jpg").write_text("not an image")
    page.set_input_files("#file", photo_dir / "notes.jpg")
    sync_api.expect(error).to_have_text(
        "notes.jpg: not an image file, or a format Pillow cannot read")
    assert results.inner_text() == ""
    sync_api.expect(page.locator("#stage")).to_be_hidden()


def test_odd_names_thin_images_and_a_phone_screen(page: sync_api.Page, photo_dir: Path) -> None:
    page.fill("#k", "20")
    page.set_input_files("#file", photo_dir / "coffee.jpg")
    sync_api.expect(page.locator("#status")).to_contain_text("10 results")
    for name in ODD_NAMES:
        shown = re.compile(r"\s*".join(re.escape(part) for part in name.split("\n")))
        card = page.locator("button.hit", has_text=shown).first
        card.scroll_into_view_if_needed()
        loaded = card.locator("img").evaluate(
            "img => img.complete ? img.naturalWidth : new Promise(done => "
            "img.addEventListener('load', () => done(img.naturalWidth)))")
        assert loaded > 0, name
    thin = page.locator("button.hit", has_text="thin.png").first
    box = thin.bounding_box()
    assert box is not None and box["height"] < 400  # 3 x 2000 px: a strip in a 4:3 box

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
    snap(page, "phone")
    assert serious_violations(page) == []


def test_the_duplicates_view_shows_each_group_and_opens_an_image(
        page: sync_api.Page, tmp_path: Path, encoder: Encoder) -> None:
    from lookalike.duplicates import find_duplicates, record_run

    status = page.locator("#dups-status")
    page.click("#dups-open")
    sync_api.expect(status).to_contain_text("No duplicates yet")
    with Collection.open(tmp_path / "coll", encoder=encoder) as coll:
        groups = find_duplicates(coll)
        record_run(coll, groups, upto=coll.catalog.sync_point().last_vid, new_only=False)
    coffee = next(g for g in groups if "coffee.jpg" in g.images)
    assert set(coffee.images) >= {"coffee.jpg", *(f"sub/{n}" for n in ODD_NAMES)}
    page.click("#dups-close")
    assert page.locator("#dups").is_hidden() and page.locator("main").is_visible()
    page.click("#dups-open")
    sync_api.expect(status).to_contain_text(f"{len(groups)} group")
    cards = page.locator("#dups-list .hit")
    sync_api.expect(cards).to_have_count(sum(len(g.images) for g in groups))
    assert page.locator("#dups-list .keep").count() == len(groups)
    assert cards.filter(has_text="identical to coffee.jpg").count() == len(coffee.images) - 1
    page.wait_for_function("[...document.querySelectorAll('#dups-list img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")  # odd names too
    snap(page, "duplicates")
    assert serious_violations(page) == []
    page.locator("#dups-list .hit", has_text="café ü.jpg").click()
    assert page.locator("#dups").is_hidden()
    sync_api.expect(page.locator("#status")).to_contain_text("more like sub/café ü.jpg")
