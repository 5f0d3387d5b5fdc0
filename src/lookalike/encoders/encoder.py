"""`Encoder.encode()`: images in, `(n, dim)` float32 unit rows out, like sentence-transformers.

Decoding and preprocessing run on a thread pool while the model runs on the previous batch
(Pillow, NumPy and ONNX Runtime all release the GIL), so the model is kept busy.

PyTorch is imported only to build a network: an encoder whose ONNX graph is cached
(`cached_encoder`) runs without it, which takes seconds off a command-line search.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
from PIL import Image
from tqdm import tqdm

from lookalike.encoders.preprocess import Preprocess
from lookalike.encoders.quantize import float_name, is_int8, quantize_graph
from lookalike.encoders.registry import DEFAULT_ENCODER, get_spec
from lookalike.encoders.runtime import (
    Backend,
    OnnxBackend,
    TorchBackend,
    default_threads,
    export_onnx,
    onnx_path,
)
from lookalike.encoders.spec import EncoderSpec
from lookalike.encoders.weights import fingerprint
from lookalike.errors import ImageError, LookalikeError
from lookalike.images import Box, DecodedImage, ImageSource, decode
from lookalike.regions import Regions

if TYPE_CHECKING:
    from torch import nn

#: An image, or an image and the box to crop from it.
EncodeInput = ImageSource | tuple[ImageSource, Box]
BackendName = Literal["auto", "onnx", "torch"]
MAX_FORWARD_BATCH = 64


@dataclass
class EncodedBatch:
    """Vectors for the inputs at `positions` (and each image's full size, as displayed);
    with regions, each input's region boxes and their vectors; the inputs that failed."""

    positions: list[int]
    vectors: np.ndarray
    sizes: list[tuple[int, int]]
    failures: list[tuple[int, ImageError]] = field(default_factory=list)
    region_boxes: list[list[Box]] = field(default_factory=list)
    region_vectors: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class Prepared:
    """One decoded input: (1, S, S, 3) uint8 pixels of the whole image and (regions, s, s, 3)
    of its regions; the decoded image is kept while its regions are still to be chosen
    (proposals)."""

    pixels: np.ndarray
    size: tuple[int, int]
    boxes: list[Box]
    region_pixels: np.ndarray | None = None
    decoded: DecodedImage | None = None


class BatchEncoder(Protocol):
    """What `Collection.index_folder` embeds with: an `Encoder`, or another that embeds
    elsewhere (`lookalike.distributed.RayEncoder`)."""

    def iter_batches(self, items: Sequence[EncodeInput], *, batch_size: int = 32,
                     progress: bool = False, regions: Regions | None = None
                     ) -> Iterator[EncodedBatch]: ...


class Encoder:
    """A loaded backbone with its preprocessing and the runtime that executes it."""

    def __init__(self, spec: EncoderSpec, module: nn.Module | None, backend: Backend,
                 weights_sha256: str | None = None) -> None:
        """`module` may be None when `backend` runs a cached graph: the network is then
        built (with PyTorch) only if another graph of it must be exported."""
        if module is None and weights_sha256 is None:
            raise ValueError("an encoder without its module needs its weights_sha256")
        self.spec = spec
        self._module = module
        self.backend = backend
        self.fingerprint = weights_sha256 or fingerprint(cast("nn.Module", module))
        self._with_activations: Backend | None = None
        self._resized: dict[int, Encoder] = {}

    @property
    def module(self) -> nn.Module:
        """The PyTorch network, built on first use."""
        if self._module is None:
            module = build_module(self.spec)
            if fingerprint(module) != self.fingerprint:  # the weights changed since
                raise LookalikeError(
                    f"{self.name}: the installed weights differ from those this encoder's "
                    "cached graph was made with; a new graph cannot be exported for it")
            self._module = module
        return self._module

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    def describe(self) -> dict[str, object]:
        """What a collection records to recognise this encoder later."""
        return {
            "name": self.name,
            "weights_sha256": self.fingerprint,
            "dim": self.dim,
            "preprocess": self.preprocess.to_dict(),
        }

    def at_size(self, size: int) -> Encoder:
        """The same network fed `size` x `size` pixels (its own graph, exported on first
        use): regions can be embedded at a lower resolution than whole images."""
        if size == self.preprocess.size:
            return self
        if size not in self._resized:
            # Its own name keys its own graphs (the activations one included).
            spec = replace(self.spec, name=f"{self.name}@{size}",
                           graph_key=f"{self.spec.graph_name}@{size}",
                           preprocess=replace(self.preprocess, size=size))
            backend: Backend
            try:
                if isinstance(self.backend, TorchBackend):
                    backend = TorchBackend(self.module, str(self.backend.device))
                    backend(np.zeros((1, size, size, 3), np.uint8))
                else:
                    backend = OnnxBackend(self._graph(spec.graph_name, size))
            except (RuntimeError, ValueError, AssertionError) as exc:
                raise LookalikeError(f"{self.name} cannot run at {size} px: {exc}") from None
            self._resized[size] = Encoder(spec, self._module, backend, self.fingerprint)
        return self._resized[size]

    def prepare(self, item: EncodeInput, regions: Regions | None = None) -> Prepared:
        """Decode one input once; model-ready pixels for it (or its crop box) and, when
        `regions` is given, for each region box, cut from the same decoded pixels."""
        if isinstance(item, tuple):
            source, box = item
            decoded = decode(source)
            return Prepared(self.preprocess(decoded.crop(box))[None], decoded.full_size, [])
        size = self.preprocess.size
        # Regions are smaller than the image: decode enough detail for them too.
        decoded = decode(item, draft_size=size * 2 if regions else size)
        whole = self.preprocess(decoded.image)[None]
        if regions is not None and regions.needs_activations:
            return Prepared(whole, decoded.full_size, [], decoded=decoded)
        boxes = regions.boxes(decoded.full_size) if regions else []
        return Prepared(whole, decoded.full_size, boxes, self._crops(decoded, boxes, regions))

    def _crops(self, decoded: DecodedImage, boxes: list[Box], regions: Regions | None
               ) -> np.ndarray:
        size = regions.size if regions and regions.size else self.preprocess.size
        preprocess = replace(self.preprocess, size=size)
        crops = [preprocess(decoded.crop(b)) for b in boxes]
        return np.stack(crops) if crops else np.empty((0, size, size, 3), np.uint8)

    def embed_with_activations(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and the (B, h, w) activation maps of the backbone's last feature map, from
        one forward pass (a second graph, built on first use)."""
        if self._with_activations is None:
            from lookalike.encoders.heads import WithActivations

            size = self.preprocess.size
            if isinstance(self.backend, TorchBackend):
                self._with_activations = TorchBackend(WithActivations(self.module, size),
                                                      str(self.backend.device))
            else:
                self._with_activations = OnnxBackend(self._graph(
                    f"{self.spec.graph_name}+activations", size,
                    lambda: WithActivations(self.module, size),
                    outputs=("embedding", "activations")))
        vectors, maps = self._with_activations.run(np.ascontiguousarray(pixels, np.uint8))
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12), maps

    def _propose(self, prepared: list[Prepared], regions: Regions, pool: ThreadPoolExecutor
                 ) -> tuple[list[Prepared], np.ndarray]:
        """Embed the whole images, choose each one's regions from its activation map, and
        cut them out."""
        whole, maps = self.embed_with_activations(np.concatenate([p.pixels for p in prepared]))

        def cut(p: Prepared, activations: np.ndarray) -> Prepared:
            assert p.decoded is not None
            boxes = regions.boxes(p.size, activations)
            return Prepared(p.pixels, p.size, boxes, self._crops(p.decoded, boxes, regions))

        return list(pool.map(cut, prepared, maps)), whole

    def _graph(self, name: str, size: int, module: Any = None,
               outputs: tuple[str, ...] = ("embedding",)) -> Path:
        """The cached ONNX graph `name` of this network at `size` px, exported (which builds
        the network) only when it is not there yet; `module` makes the network to export
        when it is not the plain one."""
        path = onnx_path(name, self.fingerprint)
        if path.is_file():
            return path
        return onnx_graph(name, module() if module else self.module, size, self.fingerprint,
                          outputs)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The bare forward pass on prepared (B, S, S, 3) uint8 pixels, at most
        `MAX_FORWARD_BATCH` at a time: regions multiply a batch, and the runtime keeps the
        memory of its largest batch."""
        chunks = [self.backend(np.ascontiguousarray(pixels[i:i + MAX_FORWARD_BATCH], np.uint8))
                  for i in range(0, len(pixels), MAX_FORWARD_BATCH)]
        out = np.concatenate(chunks) if chunks else np.empty((0, self.dim), np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def iter_batches(
        self,
        items: Sequence[EncodeInput],
        *,
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool = False,
        regions: Regions | None = None,
    ) -> Iterator[EncodedBatch]:
        """Encode `items` batch by batch (and the `regions` of each); a bad image is
        reported, not raised."""
        if batch_size < 1:
            raise LookalikeError(f"batch_size must be >= 1, got {batch_size}")
        workers = workers or default_threads()
        bar = tqdm(total=len(items), unit="img", disable=not progress, smoothing=0.1)
        with ThreadPoolExecutor(workers) as pool:
            pending: deque[tuple[int, Future[Prepared]]] = deque()
            upcoming = iter(enumerate(items))

            def top_up() -> None:
                while len(pending) < 2 * batch_size + workers:
                    nxt = next(upcoming, None)
                    if nxt is None:
                        return
                    pending.append((nxt[0], pool.submit(self.prepare, nxt[1], regions)))

            top_up()
            while pending:
                positions: list[int] = []
                prepared: list[Prepared] = []
                failures: list[tuple[int, ImageError]] = []
                while pending and len(positions) < batch_size:
                    pos, future = pending.popleft()
                    top_up()
                    try:
                        prepared.append(future.result())
                        positions.append(pos)
                    except ImageError as exc:
                        failures.append((pos, exc))
                whole: np.ndarray | None = None
                if regions is not None and regions.needs_activations and prepared:
                    # The whole images' activations choose their regions.
                    prepared, whole = self._propose(prepared, regions, pool)
                if whole is None:
                    whole = (self.embed_pixels(np.concatenate([p.pixels for p in prepared]))
                             if prepared else np.empty((0, self.dim), np.float32))
                crops = [p.region_pixels for p in prepared if p.region_pixels is not None]
                flat = (self.at_size(crops[0].shape[1]).embed_pixels(np.concatenate(crops))
                        if crops else np.empty((0, self.dim), np.float32))
                starts = np.cumsum([0] + [len(p.boxes) for p in prepared])
                bar.update(len(positions) + len(failures))
                yield EncodedBatch(
                    positions, whole, [p.size for p in prepared], failures,
                    [p.boxes for p in prepared],
                    [flat[start:end] for start, end in pairwise(starts)],
                )
        bar.close()

    def encode(
        self,
        items: Sequence[EncodeInput] | EncodeInput,
        *,
        batch_size: int = 32,
        progress: bool = False,
    ) -> np.ndarray:
        """Embed images (paths, bytes, PIL images, or `(image, box)` crops).

        Returns float32 of shape `(n, dim)` with unit rows; a single input gives `(dim,)`.
        Raises `ImageError` on the first bad image.
        """
        single = isinstance(items, (str, bytes, Path, Image.Image, tuple))
        batch = [cast(EncodeInput, items)] if single else list(cast(Sequence[EncodeInput], items))
        out = np.empty((len(batch), self.dim), np.float32)
        for encoded in self.iter_batches(batch, batch_size=batch_size, progress=progress):
            if encoded.failures:
                raise encoded.failures[0][1]
            out[encoded.positions] = encoded.vectors
        return out[0] if single else out


def create_encoder(
    name: str = DEFAULT_ENCODER,
    *,
    weights: str | Path | None = None,
    backend: BackendName = "auto",
    device: str | None = None,
) -> Encoder:
    """Load an encoder by name (`list_encoders()`, `timm:MODEL`, or the folder of a model
    trained with `lookalike.train`).

    `backend="auto"` runs PyTorch on a GPU when there is one, else ONNX Runtime on the CPU
    (the graph is exported once and cached). `weights` overrides the entry's weights file.
    """
    import torch

    spec = resolve_spec(name)
    pre = spec.preprocess
    module = build_module(spec, weights)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = ("torch" if device != "cpu" and not is_int8(name) else "onnx") \
        if backend == "auto" else backend
    if chosen not in ("onnx", "torch"):
        raise LookalikeError(f"backend must be auto, onnx or torch, got {backend!r}")
    if chosen == "torch" and is_int8(name):
        raise LookalikeError(f"{name}: INT8 runs on ONNX Runtime (backend onnx)")
    weights_sha = fingerprint(module)
    runtime: Backend = (
        TorchBackend(module, device) if chosen == "torch"
        else OnnxBackend(onnx_graph(spec.graph_key or name, module, pre.size, weights_sha))
    )
    return Encoder(spec, module, runtime, weights_sha)


def onnx_graph(name: str, module: nn.Module, size: int, weights_sha: str,
               outputs: tuple[str, ...] = ("embedding",)) -> Path:
    """The cached ONNX graph of encoder `name` at `size` px: exported from `module`, and for
    an INT8 name, quantised from its float32 graph (exported first when missing)."""
    path = onnx_path(name, weights_sha)
    if not is_int8(name):
        return export_onnx(module, size, path, outputs=outputs)
    made = export_onnx(module, size, onnx_path(float_name(name), weights_sha), outputs=outputs)
    return quantize_graph(made, path, size)


def cached_encoder(described: dict[str, Any], *, spinning: bool = True) -> Encoder | None:
    """The encoder a collection recorded (`Encoder.describe()`), running its cached ONNX
    graph without importing PyTorch; None when that graph is not cached, when the name is
    not a registered encoder, or on a machine with an NVIDIA GPU (PyTorch runs there).
    `spinning`: see `OnnxBackend`."""
    name, sha = str(described["name"]), str(described["weights_sha256"])
    path = onnx_path(name, sha)
    if not path.is_file() or os.path.exists("/proc/driver/nvidia/version"):
        return None
    try:
        spec = get_spec(name)
    except LookalikeError:  # a model folder or timm:NAME: resolving it needs PyTorch
        return None
    return Encoder(spec, None, OnnxBackend(path, spinning=spinning), sha)


def build_module(spec: EncoderSpec, weights: str | Path | None = None) -> nn.Module:
    """The network as one module: uint8 pixels in, unit vectors out."""
    from torch import nn

    from lookalike.encoders.heads import L2Normalized, PixelNormalize

    pre = spec.preprocess
    return nn.Sequential(
        PixelNormalize(pre.mean, pre.std),
        L2Normalized(spec.load(Path(weights) if weights else None)),
    ).eval()


def resolve_spec(name: str) -> EncoderSpec:
    """A registry entry, or for a trained model folder its base entry with the fine-tuned
    weights and/or the head on top (so they run, and export to ONNX, as one network)."""
    folder = Path(name).expanduser()
    from lookalike.encoders.model_folder import is_model_folder, load_model

    if not is_model_folder(folder):
        return get_spec(name)
    base_name, backbone_state, head = load_model(folder)
    base = get_spec(base_name)

    def load(weights: Path | None) -> nn.Module:
        from torch import nn

        from lookalike.encoders.heads import L2Normalized

        net = base.load(weights)
        if backbone_state is not None:
            net.load_state_dict(backbone_state)
        return nn.Sequential(L2Normalized(net), head) if head is not None else net

    what = " + ".join(w for w, used in (("fine-tuned backbone", backbone_state is not None),
                                        ("contrastive head", head is not None)) if used)
    # Its graphs are keyed by content (the weights' fingerprint), not by where it lies.
    return replace(base, name=str(folder.resolve()), load=load,
                   graph_key=f"trained-{base_name}",
                   dim=head.dim_out if head is not None else base.dim,
                   weights_source=f"{base.weights_source}, trained in {folder}",
                   description=f"{base_name} with a {what}")
