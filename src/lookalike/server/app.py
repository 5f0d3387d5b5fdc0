"""The HTTP API and web page over one collection.

    GET  /                      the page: drop an image, drag a box on it, see the results
    GET  /api/info              the collection: images, encoder, index, regions
    POST /api/search            form fields: image (a file) or like (an indexed id), crop
                                ("X0,Y0,X1,Y1"), k, verify, metric -> {"hits": [...]}
    POST /api/duplicates        image or like -> {"copies": [...]}: is it already there, and
                                as what (pairs as `lookalike duplicates --json` writes them)
    GET  /api/duplicates        the groups the last `lookalike duplicates` run found, and
                                when, with each image's size: {"groups", "when", "sizes"...}
    GET  /api/images/{id}       an indexed image as a JPEG, at most `size` px a side (the id
                                percent-encoded: a file name may hold any character)

Requests run in parallel, in pools sized to the machine (ONNX Runtime and faiss release the
GIL; each thread reads the catalog through a connection of its own). Each pool has a
bounded queue: a request that finds it full is answered 503 with `Retry-After` at once
instead of waiting behind hundreds, and one that runs past its time limit gets a 503 too.
Verified searches (seconds each) have a pool of their own, so they never hold up cheap
ones. A background thread picks up the commits of an indexer running beside the server, so
requests do not. Uploads are refused with 413 as soon as they pass the size limit, before
the rest is read.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.convertors import Convertor, register_url_convertor

from lookalike.catalog import ImageRecord
from lookalike.collection import Collection, Hit, Metric
from lookalike.encoders import cached_encoder
from lookalike.errors import ImageError, LookalikeError
from lookalike.folder import image_path
from lookalike.images import Box, ImageSource, decode, parse_box
from lookalike.manifest import Manifest

MAX_UPLOAD_BYTES = 50 * 2**20
VERIFY_LIMIT = 200  # candidates a request may ask to verify (~5-10 ms each)
SEARCH_SECONDS = 30.0  # a search's time limit
VERIFY_SECONDS = 120.0  # a verified search's
QUEUED_A_WORKER = 16  # calls that may wait, per worker, before new ones get a 503
REFRESH_SECONDS = 1.0  # how often new commits are looked for
VERIFY_NICENESS = 10  # verified searches yield the cores to plain ones
T = TypeVar("T")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BoundedPool:
    """Threads with a bounded queue and a time limit a call: past `workers + queued` calls
    in the pool a new one is refused (503, `Retry-After`) rather than left to wait; a call
    past `seconds` is answered 503 (its thread finishes it, still counted)."""

    def __init__(self, name: str, workers: int, queued: int, seconds: float, *,
                 nice: int = 0) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=name,
                                            initializer=_lower_priority, initargs=(nice,))
        self._capacity = workers + queued
        self._in_pool = 0  # changed on the event loop only
        self.seconds = seconds

    async def run(self, fn: Callable[[], T]) -> T:
        if self._in_pool >= self._capacity:
            raise HTTPException(503, "the server is busy; try again in a moment",
                                headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        self._in_pool += 1
        future: Future[T] = self._executor.submit(fn)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.seconds)
        except TimeoutError:
            raise HTTPException(503, f"the search took longer than {self.seconds:g} s",
                                headers={"Retry-After": "5"}) from None

    def _release(self) -> None:
        self._in_pool -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """This thread yields the CPU to the others (Linux schedules threads one by one)."""
    if nice and hasattr(os, "setpriority"):
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class BodyLimit:
    """ASGI middleware: a request body over `limit()` bytes gets 413 as soon as that is
    known (its Content-Length, or the bytes received so far), not after it was all read."""

    class _TooLarge(Exception):
        pass

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit() + 64 * 1024  # the form's own fields and boundaries
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send)
            return
        received = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise self._TooLarge
            return message

        started = False

        async def watched(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except self._TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse({"detail": f"over the {self.limit() >> 20} MiB upload limit"},
                                status_code=413, headers={"Connection": "close"})
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> MutableMapping[str, Any]:
    return {"type": "http.disconnect"}


class _AnyText(Convertor[str]):
    """Any text, newlines included: Starlette's `path` (`.*`) stops at a newline, and a file
    name (so an image id) may hold one."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("lookalike_any", _AnyText())


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, as uvicorn opens one: opening it before the server
    starts makes a taken port one clear LookalikeError instead of uvicorn's log line and
    exit 3, and once it listens, clients wait in its backlog instead of being refused."""
    # Said to be TCP, so asyncio turns Nagle off on each connection: without it a kept-alive
    # connection waited 40 ms a response (the body behind the headers, for a delayed ACK).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's backlog; with SO_REUSEADDR a clash may show only here
    except OSError as exc:  # in use, not ours to take, or no such host
        sock.close()
        reason = exc.strerror or str(exc)
        raise LookalikeError(f"{address(host, port)}: {reason[:1].lower()}{reason[1:]}"
                             ) from None
    return sock


def address(host: str, port: int) -> str:
    """host:port as a URL writes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_server(app: FastAPI, sock: socket.socket) -> None:
    """Serve `app` on the bound `sock` until interrupted (Ctrl-C ends it quietly, as
    `uvicorn.run` does)."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    with suppress(KeyboardInterrupt):
        server.run(sockets=[sock])


def create_app(collection: str | Path, *, workers: int | None = None) -> FastAPI:
    """A FastAPI app serving the collection at `collection` (opened now, so a bad path
    fails before a server starts); `workers` search threads (the CPUs by default)."""
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 2)
    # Requests embed at once: the model's threads wait rather than spin (see OnnxBackend).
    encoder = cached_encoder(Manifest.read(Path(collection)).encoder, spinning=False)
    coll = Collection.open(collection, encoder=encoder)
    try:
        coll.encoder  # noqa: B018 (the model loads before the first query, not in it)
        coll.load()
    except BaseException:
        coll.close()
        raise
    searches = BoundedPool("lookalike-search", workers, QUEUED_A_WORKER * workers,
                           SEARCH_SECONDS)
    verified = BoundedPool("lookalike-verify", max(1, workers // 2), QUEUED_A_WORKER,
                           VERIFY_SECONDS, nice=VERIFY_NICENESS)
    stop = threading.Event()

    def follow_commits() -> None:
        """The vectors read into the page cache (the first searches then wait for no disk),
        then new commits of an indexer beside the server, picked up off the requests'
        path."""
        with suppress(Exception):  # outside the lock: a refresh meanwhile changes no page
            coll.index.current().warm()
        while not stop.wait(REFRESH_SECONDS):
            with suppress(Exception):  # a commit being written: the next round gets it
                coll.index.current()

    follower = threading.Thread(target=follow_commits, name="lookalike-follow", daemon=True)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        follower.start()
        yield
        stop.set()
        follower.join(timeout=5)  # a warm-up still reading a large index is left behind
        searches.shutdown()
        verified.shutdown()
        coll.close()

    app = FastAPI(title="lookalike", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=lambda: MAX_UPLOAD_BYTES)

    @app.exception_handler(LookalikeError)
    async def bad_input(_: Request, exc: LookalikeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """Which field is wrong and why, never the value sent (an upload's bytes)."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: "
                             f"{e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": problems}, status_code=422)

    page = resources.files("lookalike.server").joinpath("page.html").read_text("utf-8")

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse,
                   include_in_schema=False)
    async def index_page() -> str:
        return page

    @app.api_route("/api/info", methods=["GET", "HEAD"])
    async def info() -> dict[str, Any]:
        def describe() -> dict[str, Any]:
            index = coll.index_info()
            return {"name": coll.path.name, "images": index["images"],
                    "vectors": index["vectors"], "encoder": coll.manifest.encoder_name,
                    "index": index["spec"], "regions": coll.manifest.regions,
                    "calibrated": coll.calibration is not None}
        return await searches.run(describe)

    @app.post("/api/search")
    async def search(
        image: Annotated[UploadFile | None, File(description="the query image")] = None,
        like: Annotated[str | None, Form(description="or an indexed id as the query")] = None,
        crop: Annotated[str | None, Form(description="X0,Y0,X1,Y1 in the query's pixels")
                        ] = None,
        k: Annotated[int, Form(ge=1, le=1000)] = 10,
        verify: Annotated[int, Form(ge=0, le=VERIFY_LIMIT)] = 0,
        metric: Annotated[Metric, Form()] = "cosine",
    ) -> dict[str, Any]:
        if (image is None) == (like is None):
            raise HTTPException(400, "give either an image file or an indexed id (like)")
        try:
            box = parse_box(crop) if crop else None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        query: ImageSource | None = None
        name = like or ""
        if image is not None:
            name = image.filename or "the uploaded image"
            query = await image.read(MAX_UPLOAD_BYTES + 1)
            if len(query) > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"{name}: over the {MAX_UPLOAD_BYTES >> 20} MiB "
                                    "upload limit")

        def find() -> list[dict[str, Any]]:
            if like is not None:
                _indexed_path(coll, like)  # 404 for an unknown id
            hits = _search(coll, query, like, box, k=k, verify=verify, metric=metric)
            records = coll.catalog.images_named(h.id for h in hits)
            return [_hit_json(hit, records.get(hit.id)) for hit in hits]

        start = time.perf_counter()
        try:
            hits = await (verified if verify else searches).run(find)
        except ImageError as exc:  # named after the upload, not "<123 bytes>"
            raise HTTPException(400, f"{name}: {exc.reason}") from None
        return {"hits": hits, "seconds": round(time.perf_counter() - start, 4)}

    @app.post("/api/duplicates")
    async def duplicates(
        image: Annotated[UploadFile | None, File(description="the image to look for")] = None,
        like: Annotated[str | None, Form(description="or an indexed id")] = None,
    ) -> dict[str, Any]:
        """Is this image already in the collection, and as what (identical, resized,
        cropped...)? Its copies, each pair as `lookalike duplicates --json` writes it."""
        from lookalike.duplicates import copies_of

        if (image is None) == (like is None):
            raise HTTPException(400, "give either an image file or an indexed id (like)")
        name = like or (image.filename if image is not None else None) or "the upload"
        data = await image.read(MAX_UPLOAD_BYTES + 1) if image is not None else None
        if data is not None and len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"{name}: over the {MAX_UPLOAD_BYTES >> 20} MiB "
                                "upload limit")

        def find() -> list[dict[str, Any]]:
            if like is not None:
                _indexed_path(coll, like)  # 404 for an unknown id
            return [p.to_dict() for p in copies_of(coll, data, like=like, name=name)]

        try:
            return {"copies": await verified.run(find)}
        except ImageError as exc:
            raise HTTPException(400, f"{name}: {exc.reason}") from None

    @app.api_route("/api/duplicates", methods=["GET", "HEAD"])
    async def found_duplicates() -> dict[str, Any]:
        """The groups of copies the last `lookalike duplicates` run found, as its `--json`
        writes them, with when it ran and each image's size ([width, height]). The server
        does not look for them itself: over a whole collection that takes minutes."""
        from lookalike.duplicates import last_run

        def read() -> dict[str, Any]:
            run = last_run(coll)
            groups = run.get("groups") or []
            records = coll.catalog.images_named(i for g in groups for i in g["images"])
            return {"groups": groups, "when": run.get("when"),
                    "new_only": bool(run.get("new_only")), "moved": run.get("moved", 0),
                    "sizes": {i: [r.width, r.height] for i, r in records.items()}}

        return await searches.run(read)

    @app.api_route("/api/images/{image_id:lookalike_any}", methods=["GET", "HEAD"])
    async def indexed_image(image_id: str, size: Annotated[int, Query(ge=16, le=2048)] = 320
                            ) -> Response:
        path = await searches.run(lambda: _indexed_path(coll, image_id))
        try:  # decoded beside the collection's thread: a results page asks for many at once
            data = await asyncio.to_thread(_thumbnail, path, size)
        except ImageError as exc:  # changed or removed since it was indexed
            raise HTTPException(410, str(exc)) from None
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=60"})

    return app


def _indexed_path(coll: Collection, image_id: str) -> Path:
    """The file of an indexed image; 404 for ids the collection does not hold (so no path
    outside the indexed folder can be asked for)."""
    record = coll.catalog.image(image_id)
    if record is None or record.status != "ok":
        raise HTTPException(404, f"{image_id}: no such image in the collection")
    return image_path(coll.root or coll.path, image_id)  # `\xNN` ids too


def _thumbnail(path: Path, size: int) -> bytes:
    picture = decode(path, draft_size=size).image
    picture.thumbnail((size, size))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85)
    return out.getvalue()


def _search(coll: Collection, query: ImageSource | None, like: str | None, box: Box | None,
            **options: Any) -> list[Hit]:
    if like is not None and box is not None:  # a part of an indexed image: its file is the query
        return coll.search(_indexed_path(coll, like), crop=box, **options)
    return coll.search(query, like=like, crop=box, **options)


def _hit_json(hit: Hit, record: ImageRecord | None) -> dict[str, Any]:
    """A hit as the page needs it: its image's size (to draw the box) and URL; no server
    paths."""
    out = hit.to_dict()
    del out["path"]
    if record is not None:
        out["width"], out["height"] = record.width, record.height
    out["url"] = "api/images/" + quote(hit.id)  # "?", "#", "%", newlines too; "/" kept
    return out
