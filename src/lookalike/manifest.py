"""A collection's manifest: what its vectors mean (the encoder), how they are indexed and
split into regions, where its images are, and the format its files are in.

`manifest.json` is read into a typed `Manifest` whose format version is checked: a newer
format is refused (this lookalike cannot know what changed), an older one is named so that
it can be upgraded (`lookalike upgrade`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lookalike.atomic import atomic_write
from lookalike.errors import LookalikeError

FORMAT_VERSION = 2  # 1: every vector's bytes in the catalog too


@dataclass(frozen=True)
class Manifest:
    encoder: dict[str, Any]  # the encoder's description: name, weights_sha256, dim...
    index: str  # the index spec, normalised
    regions: str = "none"  # the regions spec, normalised
    region_discount: float = 0.0
    local_features: bool = False  # visual words of each image, in a local-feature index
    root: str | None = None  # the indexed folder, absolute
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys of later versions, kept

    @property
    def encoder_name(self) -> str:
        return str(self.encoder["name"])

    @property
    def dim(self) -> int:
        return int(self.encoder["dim"])

    @property
    def fingerprint(self) -> str | None:
        return self.encoder.get("weights_sha256")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        if data["root"] is None:
            del data["root"]
        return {**extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Raises KeyError, TypeError or ValueError on a malformed one."""
        known = {"encoder", "index", "regions", "region_discount", "local_features", "root",
                 "format_version"}
        encoder = dict(data["encoder"])
        if not isinstance(encoder.get("name"), str) or int(encoder["dim"]) <= 0:
            raise ValueError("the encoder needs a name and a dimension")
        return cls(encoder=encoder, index=str(data["index"]),
                   regions=str(data.get("regions", "none")),
                   region_discount=float(data.get("region_discount", 0.0)),
                   local_features=bool(data.get("local_features", False)),
                   root=data.get("root"), format_version=int(data.get("format_version", 1)),
                   extra={k: v for k, v in data.items() if k not in known})

    def write(self, path: Path) -> None:
        with atomic_write(path) as fh:
            json.dump(self.to_dict(), fh, indent=2)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of the collection at `folder`, or a one-line error saying what is
        wrong (missing, unreadable, malformed, or of a newer format)."""
        try:
            manifest = cls.from_dict(json.loads((folder / "manifest.json").read_text()))
        except FileNotFoundError:
            if (folder / "catalog.sqlite").exists():
                raise LookalikeError(f"{folder}: manifest.json is missing; `lookalike check -c "
                                     f"{folder} --repair` restores it") from None
            raise LookalikeError(f"{folder}: not a lookalike collection (no manifest.json)"
                                 ) from None
        except NotADirectoryError:
            raise LookalikeError(f"{folder}: not a lookalike collection (not a folder)"
                                 ) from None
        except PermissionError:
            raise LookalikeError(f"{folder}: permission denied (a collection of another "
                                 "user?)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LookalikeError(f"{folder}/manifest.json: malformed ({exc})") from None
        if manifest.format_version > FORMAT_VERSION:
            raise LookalikeError(
                f"{folder}: made by a newer lookalike (collection format "
                f"{manifest.format_version}; this version reads up to {FORMAT_VERSION}); "
                "upgrade lookalike")
        return manifest

    def check_current(self, folder: Path) -> None:
        """An older format is an error that says how to upgrade it."""
        if self.format_version < FORMAT_VERSION:
            raise LookalikeError(
                f"{folder}: made by an older lookalike (collection format "
                f"{self.format_version}); `lookalike upgrade -c {folder}` brings it to format "
                f"{FORMAT_VERSION} in place, once (so does `lookalike index`)")
