"""`lookalike serve` under load (issue 18): throughput and latency of concurrent clients on
127.0.0.1, by query kind, with an indexer and a verified search beside them.

The server is `lookalike serve` in its own process; the clients are threads of this one,
each with a keep-alive connection, sending requests back to back for `--seconds`. Query
kinds: `like` (an indexed id: no embedding) and `upload` (a 640 px JPEG, embedded). Rows:
clients 1, 4 and 16 for each kind; 16 `like` clients while one client sends `verify=50`
searches; 16 `like` clients while an indexer adds images beside the server (100 a commit,
through the engine with the pool encoder of `scale.py`). The encoder's bare rate (one image,
the ONNX session alone) is measured in this process first, while the server is idle.

    .venv/bin/python benchmarks/serve.py --coll /tmp/lookalike-scale/coll-1000000-hnsw32 \\
        --folder /tmp/lookalike-scale/images-1000000 --pool /tmp/lookalike-scale/pool.npy
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "samples"

INDEXER = r"""
import sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[4])
import scale
from lookalike import Collection

coll_path, folder, pool = Path(sys.argv[1]), Path(sys.argv[2]), np.load(sys.argv[3])
with Collection.open(coll_path) as coll:
    encoder = scale.PoolEncoder(pool)
    added = folder / "served"
    base = 3 * 10**8 + int(time.time()) % 10**5 * 10**4  # names no earlier run used
    for round_ in range(1000):
        first = base + 100 * round_
        scale.write_images(added, first, 100)
        paths = [added / f"{i // 1000:05d}" / f"img-{i}.png" for i in range(first, first + 100)]
        coll.index_paths(paths, batch_size=100, embed_with=encoder)
        print(paths[-1].relative_to(folder).as_posix(), flush=True)
        time.sleep(1.0)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(coll: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "-c", str(coll),
                               "--port", str(port)], stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode() if server.stderr else "") from None
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def upload_body(jpeg: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"query.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + jpeg + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n10\r\n"
        f"--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def form_body(fields: dict[str, str]) -> tuple[bytes, str]:
    from urllib.parse import urlencode

    return urlencode(fields).encode(), "application/x-www-form-urlencoded"


class Client(threading.Thread):
    """Sends requests back to back until `stop`; records each one's latency and status."""

    def __init__(self, port: int, make: Any, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.make, self.stop = port, make, stop
        self.latencies: list[float] = []
        self.errors = 0

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        while not self.stop.is_set():
            body, content_type = self.make()
            start = time.perf_counter()
            try:
                connection.request("POST", "/api/search", body, {"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                ok = False
            if not self.stop.is_set():
                self.latencies.append(time.perf_counter() - start)
                self.errors += not ok


def load(port: int, clients: int, make: Any, seconds: float) -> dict[str, Any]:
    stop = threading.Event()
    threads = [Client(port, make, stop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    times = sorted(t for c in threads for t in c.latencies)
    errors = sum(c.errors for c in threads)
    if not times:
        return {"clients": clients, "rps": 0.0, "errors": errors}
    return {"clients": clients, "rps": len(times) / seconds, "errors": errors,
            "p50_ms": 1000 * statistics.median(times),
            "p95_ms": 1000 * float(np.percentile(times, 95)),
            "p99_ms": 1000 * float(np.percentile(times, 99))}


def server_rss_mb(server: subprocess.Popen[bytes]) -> tuple[float, float]:
    status = Path(f"/proc/{server.pid}/status").read_text()
    values = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status.splitlines()
              if line.startswith(("VmRSS", "VmHWM"))}
    return values["VmRSS"], values["VmHWM"]


def bare_rate(coll: Path, jpeg: bytes, seconds: float = 10.0) -> float:
    """Images a second of the collection's ONNX graph alone, one image a run."""
    import onnxruntime as ort
    from PIL import Image

    from lookalike.encoders.runtime import onnx_path

    recorded = json.loads((coll / "manifest.json").read_text())["encoder"]
    session = ort.InferenceSession(str(onnx_path(recorded["name"], recorded["weights_sha256"])),
                                   providers=["CPUExecutionProvider"])
    size = int(recorded.get("preprocess", {}).get("size", 224))
    image = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((size, size))
    pixels = np.asarray(image)[None]
    name = session.get_inputs()[0].name
    session.run(None, {name: pixels})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: pixels})
        runs += 1
    return runs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coll", type=Path, required=True)
    parser.add_argument("--folder", type=Path, help="the collection's image folder (for the "
                        "indexer row)")
    parser.add_argument("--pool", type=Path, help="scale.py's pool.npy (for the indexer row)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    from PIL import Image

    photo = Image.open(SAMPLES / "coffee.jpg").convert("RGB")
    photo = photo.resize((640, round(640 * photo.height / photo.width)))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    with sqlite3.connect(args.coll / "catalog.sqlite") as db:
        ids = [r[0] for r in db.execute("SELECT id FROM images WHERE status = 'ok' "
                                        "ORDER BY random() LIMIT 5000")]
    rng = random.Random(0)

    def like() -> tuple[bytes, str]:
        return form_body({"like": rng.choice(ids), "k": "10"})

    def upload() -> tuple[bytes, str]:
        return upload_body(jpeg)

    bare = bare_rate(args.coll, jpeg)
    print(json.dumps({"bare_images_per_s": bare}), flush=True)
    port = free_port()
    server = start_server(args.coll, port)
    rows: list[dict[str, Any]] = []
    try:
        load(port, 4, like, 5)  # warm: pages of the index in memory
        for kind, make in (("like", like), ("upload", upload)):
            for clients in args.clients:
                row = {"kind": kind, **load(port, clients, make, args.seconds)}
                rows.append(row)
                print(json.dumps(row), flush=True)

        stop = threading.Event()
        verifier = Client(port, lambda: form_body({"like": rng.choice(ids), "verify": "50"}),
                          stop)
        verifier.start()
        row = {"kind": "like + a verify=50 client", **load(port, 16, like, args.seconds),
               "verify_requests": len(verifier.latencies)}
        stop.set()
        verifier.join()
        rows.append(row)
        print(json.dumps(row), flush=True)

        if args.folder and args.pool:
            indexer = subprocess.Popen(
                [sys.executable, "-c", INDEXER, str(args.coll), str(args.folder),
                 str(args.pool), str(Path(__file__).parent)], stdout=subprocess.PIPE,
                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            row = {"kind": "like + an indexer beside", **load(port, 16, like, args.seconds)}
            indexer.kill()
            added = indexer.communicate()[0].split()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            time.sleep(2.0)  # one more commit round for the server to pick up
            body, content_type = form_body({"like": added[-1], "k": "3"})
            connection.request("POST", "/api/search", body, {"Content-Type": content_type})
            row["commits"] = len(added)
            row["last_added_found"] = connection.getresponse().status == 200
            rows.append(row)
            print(json.dumps(row), flush=True)
        rss, peak = server_rss_mb(server)
    finally:
        server.terminate()
        server.wait()
    print(f"\nbare encoder: {bare:.1f} images/s (one image a run); server RSS {rss:,.0f} MB, "
          f"peak {peak:,.0f} MB")
    print("\n| query | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['clients']} | {r['rps']:.1f} | {r.get('p50_ms', 0):.1f} "
              f"| {r.get('p95_ms', 0):.1f} | {r.get('p99_ms', 0):.1f} | {r['errors']} |")


if __name__ == "__main__":
    main()
