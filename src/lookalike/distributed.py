"""Embedding on a Ray cluster, for folders one machine cannot get through in time.

    encoder = RayEncoder(coll.encoder, address="auto")       # or None: a local Ray
    coll.index_folder("/photos", embed_with=encoder)

The driver reads each file and ships its bytes, so the workers need no shared filesystem,
only lookalike and the encoder's weights (a registry name loads them from the installed
packages). Actors, each holding the encoder, decode and embed a batch at a time; the driver
commits the vectors exactly as a local run does, so resuming, failures and the catalog work
the same. Needs the `ray` extra.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lookalike.encoders import EncodedBatch, EncodeInput, Encoder, create_encoder
from lookalike.errors import ImageError, LookalikeError
from lookalike.regions import Regions, parse_regions


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LookalikeError("distributed embedding needs Ray: pip install 'lookalike[ray]'"
                             ) from None
    return ray


class _Embedder:
    """A Ray actor: one encoder, loaded once, embedding one batch of image bytes a call."""

    def __init__(self, encoder_name: str) -> None:
        self.encoder = create_encoder(encoder_name)

    def fingerprint(self) -> str:
        return self.encoder.fingerprint

    def embed(self, start: int, payloads: list[bytes], regions: str
              ) -> tuple[int, EncodedBatch, list[tuple[int, str]]]:
        """The batch that begins at `start`, its failures apart as (position, reason): an
        `ImageError` does not pickle."""
        batch = next(self.encoder.iter_batches(payloads, batch_size=len(payloads),
                                               regions=parse_regions(regions)))
        failures = [(pos, error.reason) for pos, error in batch.failures]
        batch.failures = []
        return start, batch, failures


class RayEncoder:
    """`Encoder.iter_batches` with the decoding and the model spread over Ray actors.

    `address` is passed to `ray.init` when Ray is not initialised yet (None: start a local
    one, "auto": join the running cluster). `actors` defaults to one per `cpus_per_actor`
    CPUs in the cluster. Every actor must load the same weights as `encoder` (checked).
    """

    def __init__(self, encoder: Encoder, *, address: str | None = None,
                 actors: int | None = None, cpus_per_actor: float = 2) -> None:
        ray = _ray()
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise LookalikeError(f"Ray at {address or 'a new local instance'}: {exc}"
                                     ) from None
        if actors is None:
            cpus = ray.cluster_resources().get("CPU", 1)
            actors = max(1, int(cpus // cpus_per_actor))
        actor_class = ray.remote(_Embedder).options(num_cpus=cpus_per_actor)
        self.actors = [actor_class.remote(encoder.name) for _ in range(actors)]
        loaded = ray.get([actor.fingerprint.remote() for actor in self.actors])
        if any(fingerprint != encoder.fingerprint for fingerprint in loaded):
            raise LookalikeError(f"a Ray worker loads other weights for {encoder.name} than "
                                 "this machine does: install the same packages there")

    def iter_batches(self, items: Sequence[EncodeInput], *, batch_size: int = 32,
                     progress: bool = False, regions: Regions | None = None
                     ) -> Iterator[EncodedBatch]:
        """Batches of image files (paths), in the order they finish; positions index
        `items`, and failures name the file. Each actor has two batches in hand, so it
        never waits for the driver, and the driver holds no more files than that."""
        from tqdm import tqdm

        ray = _ray()
        paths = [Path(item) for item in items]  # type: ignore[arg-type]
        spec = str(regions) if regions else "none"
        starts = iter(range(0, len(paths), batch_size))
        unread: dict[int, list[tuple[int, ImageError]]] = {}
        in_flight: dict[Any, Any] = {}  # result -> the actor computing it

        def submit(actor: Any) -> None:
            """The next batch's file contents to `actor`; an unreadable file goes as no
            bytes, its failure kept here."""
            start = next(starts, None)
            if start is None:
                return
            data = []
            for pos in range(start, min(start + batch_size, len(paths))):
                try:
                    data.append(paths[pos].read_bytes())
                except OSError as exc:
                    unread.setdefault(start, []).append(
                        (pos, ImageError(str(paths[pos]), f"cannot read: {exc.strerror}")))
                    data.append(b"")
            in_flight[actor.embed.remote(start, data, spec)] = actor

        for actor in self.actors * 2:
            submit(actor)
        with tqdm(total=len(paths), unit="img", disable=not progress) as bar:
            while in_flight:
                [done], _ = ray.wait(list(in_flight), num_returns=1)
                submit(in_flight.pop(done))
                start, batch, failures = ray.get(done)
                unreadable = unread.pop(start, [])
                skip = {pos for pos, _ in unreadable}
                batch.positions = [start + pos for pos in batch.positions]
                batch.failures = unreadable + [
                    (start + pos, ImageError(str(paths[start + pos]), reason))
                    for pos, reason in failures if start + pos not in skip]
                bar.update(len(batch.positions) + len(batch.failures))
                yield batch
