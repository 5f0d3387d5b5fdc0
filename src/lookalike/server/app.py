"""The HTTP API and web page over one collection.

    GET  /                      the page: drop an image, drag a box on it, see the results
    GET  /api/info              the collection: images, encoder, index, regions
    POST /api/search            form fields: image (a file) or like (an indexed id), crop
                                ("X0,Y0,X1,Y1"), k, verify, metric -> {"hits": [...]}
    GET  /api/images/{id}       an indexed image as a JPEG, at most `size` px a side (the id
                                percent-encoded: a file name may hold any character)

One worker thread owns the collection and runs every call in turn: SQLite connections stay
in the thread that opened them, and one search already keeps every core busy.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.convertors import Convertor, register_url_convertor

from lookalike.collection import Collection, Hit, Metric
from lookalike.errors import ImageError, LookalikeError
from lookalike.folder import image_path
from lookalike.images import Box, ImageSource, decode, parse_box

MAX_UPLOAD_BYTES = 50 * 2**20
VERIFY_LIMIT = 200  # candidates a request may ask to verify (~5-10 ms each)
T = TypeVar("T")


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
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
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


def create_app(collection: str | Path) -> FastAPI:
    """A FastAPI app serving the collection at `collection` (opened now, so a bad path
    fails before a server starts)."""
    worker = ThreadPoolExecutor(1, thread_name_prefix="lookalike-collection")
    try:
        coll = worker.submit(Collection.open, collection).result()
        worker.submit(lambda: coll.encoder).result()  # load the model before the first query
    except BaseException:
        worker.shutdown()
        raise

    async def run(fn: Callable[[], T]) -> T:
        """`fn` on the collection's thread."""
        return await asyncio.wrap_future(worker.submit(fn))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.submit(coll.close).result()
        worker.shutdown()

    app = FastAPI(title="lookalike", lifespan=lifespan)

    @app.exception_handler(LookalikeError)
    async def bad_input(_: Request, exc: LookalikeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    page = resources.files("lookalike.server").joinpath("page.html").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> str:
        return page

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        def describe() -> dict[str, Any]:
            index = coll.index_info()
            return {"name": coll.path.name, "images": index["images"],
                    "vectors": index["vectors"], "encoder": coll.manifest.encoder_name,
                    "index": index["spec"], "regions": coll.manifest.regions,
                    "calibrated": coll.calibration is not None}
        return await run(describe)

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
            return [_hit_json(coll, hit) for hit in hits]

        start = time.perf_counter()
        try:
            hits = await run(find)
        except ImageError as exc:  # named after the upload, not "<123 bytes>"
            raise HTTPException(400, f"{name}: {exc.reason}") from None
        return {"hits": hits, "seconds": round(time.perf_counter() - start, 4)}

    @app.get("/api/images/{image_id:lookalike_any}")
    async def indexed_image(image_id: str, size: Annotated[int, Query(ge=16, le=2048)] = 320
                            ) -> Response:
        path = await run(lambda: _indexed_path(coll, image_id))
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


def _hit_json(coll: Collection, hit: Hit) -> dict[str, Any]:
    """A hit as the page needs it: its image's size (to draw the box) and URL; no server
    paths."""
    out = hit.to_dict()
    del out["path"]
    record = coll.catalog.image(hit.id)
    if record is not None:
        out["width"], out["height"] = record.width, record.height
    out["url"] = "api/images/" + quote(hit.id)  # "?", "#", "%", newlines too; "/" kept
    return out
