"""Index spec strings, a tiny grammar in the spirit of faiss's `index_factory`.

    SPEC    := BODY [":" OPTION ("," OPTION)*]      OPTION := name "=" number
    BODY    := flat | kdtree | annoy | lsh | scann | auto | hnswM | ivfN | ivfN,pqM | opq,ivfN,pqM

| spec               | family                             | build      | search             |
|--------------------|------------------------------------|------------|--------------------|
| `flat`             | exact (NumPy)                      |            |                    |
| `kdtree`           | KD-tree (scikit-learn; low dims)   | `leaf=40`  |                    |
| `annoy`            | random-projection forest (Annoy)   | `trees=50` | `search_k=-1`      |
| `lsh`              | random hyperplanes (faiss)         | `bits=512` | `rerank=100`       |
| `ivf1024`          | inverted file over k-means (faiss) |            | `nprobe=16`        |
| `ivf1024,pq32`     | IVF + 4-bit product codes (faiss)  |            | `nprobe`, `rerank` |
| `opq,ivf1024,pq32` | the same after an OPQ rotation     |            | `nprobe`, `rerank` |
| `hnsw32`           | HNSW graph, M=32 (faiss)           | `efc=40`   | `ef=64`            |
| `scann`            | ScaNN (the `scann` extra)          | `leaves`   | `leaves_to_search` |
| `auto`             | measured choice (`index.auto`)     | see below  |                    |

`auto` takes `recall=0.95,k=10,latency_ms=...,memory_mb=...`; scann also takes `rerank`.

Search options given in the spec become that index's defaults; `search(..., nprobe=8)`
overrides them per call. `parse(str(spec)) == spec` for every spec (a round trip).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lookalike.index.base import IndexError_

# Token sequences of a body and the family they name; numbers go to the named parameters.
_BODIES: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {
    ("flat",): ("flat", ()),
    ("kdtree",): ("kdtree", ()),
    ("annoy",): ("annoy", ()),
    ("lsh",): ("lsh", ()),
    ("scann",): ("scann", ()),
    ("auto",): ("auto", ()),
    ("hnsw",): ("hnsw", ("M",)),
    ("ivf",): ("ivf", ("nlist",)),
    ("ivf", "pq"): ("ivfpq", ("nlist", "m")),
    ("opq", "ivf", "pq"): ("opq-ivfpq", ("nlist", "m")),
}
_NUMBERED = {"hnsw", "ivf", "pq"}
_TOKEN = re.compile(r"([a-z]+)([0-9]*)")
EXPECTED = ("flat, kdtree, annoy, lsh, scann, auto, hnswM, ivfN, ivfN,pqM or opq,ivfN,pqM, "
            "optionally followed by :name=value,... (e.g. 'ivf1024,pq32:nprobe=16')")

Number = int | float


@dataclass(frozen=True)
class IndexSpec:
    """A parsed spec: the family, the numbers of its body and the options after ':'."""

    family: str
    body: dict[str, int] = field(default_factory=dict)
    options: dict[str, Number] = field(default_factory=dict)

    def __str__(self) -> str:
        b = self.body
        text = {"hnsw": f"hnsw{b.get('M')}", "ivf": f"ivf{b.get('nlist')}",
                "ivfpq": f"ivf{b.get('nlist')},pq{b.get('m')}",
                "opq-ivfpq": f"opq,ivf{b.get('nlist')},pq{b.get('m')}"}.get(self.family,
                                                                             self.family)
        if self.options:
            text += ":" + ",".join(f"{k}={v}" for k, v in self.options.items())
        return text

    def params(self) -> dict[str, Number]:
        return {**self.body, **self.options}


def parse_spec(spec: str | IndexSpec) -> IndexSpec:
    """Parse `spec`; errors say what was expected."""
    if isinstance(spec, IndexSpec):
        return spec
    text = str(spec).strip().lower()
    body_text, _, options_text = text.partition(":")
    names: list[str] = []
    numbers: list[int] = []
    for token in body_text.split(","):
        match = _TOKEN.fullmatch(token.strip())
        if match is None or (match.group(1) in _NUMBERED) != bool(match.group(2)):
            raise IndexError_(f"unknown index spec {spec!r}; expected {EXPECTED}")
        names.append(match.group(1))
        if match.group(2):
            numbers.append(int(match.group(2)))
    if tuple(names) not in _BODIES:
        raise IndexError_(f"unknown index spec {spec!r}; expected {EXPECTED}")
    family, keys = _BODIES[tuple(names)]
    if any(n <= 0 for n in numbers):
        raise IndexError_(f"index spec {spec!r}: numbers must be positive")
    options: dict[str, Number] = {}
    for item in filter(None, (o.strip() for o in options_text.split(","))):
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise IndexError_(f"index spec {spec!r}: option {item!r} is not name=value")
        options[name.strip()] = _number(value.strip(), spec)
    return IndexSpec(family, dict(zip(keys, numbers, strict=True)), options)


def _number(value: str, spec: object) -> Number:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise IndexError_(f"index spec {spec!r}: {value!r} is not a number") from None
