"""`lookalike search` from the shell against the least a script can do for the same answer.

The bare script imports onnxruntime, NumPy and Pillow, opens the same cached ONNX graph,
resizes the same image and runs one forward pass: what any tool has to pay. Both run as
fresh processes, interleaved, and the medians are compared (issue 17's target: within 2 x).

    .venv/bin/python benchmarks/cli_start.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "samples"

BARE = """
import sys
import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
image = Image.open(sys.argv[2]).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
vector = session.run(None, {session.get_inputs()[0].name: np.asarray(image)[None]})[0]
print(vector.shape)
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    from lookalike import Collection
    from lookalike.encoders.runtime import onnx_path

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for photo in sorted(SAMPLES.glob("*.jpg")):
            shutil.copy(photo, folder)
        with Collection.create(Path(tmp) / "demo.lk") as coll:
            coll.index_folder(folder)
            recorded = coll.manifest.encoder
        graph = onnx_path(recorded["name"], recorded["weights_sha256"])
        query = folder / "coffee.jpg"
        script = Path(tmp) / "bare.py"
        script.write_text(BARE)
        lookalike = str(Path(sys.executable).with_name("lookalike"))
        commands = {
            "lookalike search -c demo.lk coffee.jpg -k 5":
                [lookalike, "search", "-c", str(Path(tmp) / "demo.lk"), str(query), "-k", "5"],
            "lookalike search --like coffee.jpg (no model)":
                [lookalike, "search", "-c", str(Path(tmp) / "demo.lk"), "--like", "coffee.jpg"],
            "bare onnxruntime script, same graph and image":
                [sys.executable, str(script), str(graph), str(query)],
        }
        for command in commands.values():  # warm the page cache
            timed(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                times[name].append(timed(command))

    bare = statistics.median(times["bare onnxruntime script, same graph and image"])
    print(f"{args.repeats} runs each, interleaved; wall time of a fresh process\n")
    print("| command | median s | min s | x bare |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {min(values):.3f} | {median / bare:.2f} |")


if __name__ == "__main__":
    main()
