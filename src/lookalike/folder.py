"""The indexed folder: which files are images, their ids, and what was skipped and why.

An image's id is its path relative to the indexed folder, with `/`. A name that is not valid
UTF-8 (common on disks from other systems) cannot be stored, printed or sent as JSON as it
is: its undecodable bytes are written `\\xNN` in the id, and `image_path` finds the file
again.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.errors import LookalikeError
from lookalike.images import IMAGE_SUFFIXES, UNSUPPORTED_SUFFIXES

_ESCAPED_BYTE = re.compile(rb"\\x([0-9a-f]{2})")


def image_id(relative: str) -> str:
    """The id of a file at `relative` ('/'-separated); os.walk hands undecodable bytes over
    as surrogate escapes, which become `\\xNN`. A name that itself holds `\\x` gets its
    backslash escaped (`\\x5c`), so that no two files share an id."""
    return relative.replace("\\x", "\\x5cx").encode("utf-8", "surrogateescape").decode(
        "utf-8", "backslashreplace")


def image_path(root: Path, image_id: str) -> Path:
    """The file an id names: `root / id`, its `\\xNN` escapes turned back into bytes (or,
    for an id made before backslashes were escaped, the literal name when only it exists)."""
    path = root / image_id
    if "\\x" in image_id:
        raw = _ESCAPED_BYTE.sub(lambda m: bytes([int(m[1], 16)]), image_id.encode())
        decoded = root / os.fsdecode(raw)
        if os.path.lexists(decoded) or not os.path.lexists(path):
            return decoded
    return path


@dataclass
class FolderScan:
    """The image files under a folder by id, and what was passed over: files of formats
    lookalike cannot read, and sub-folders it could not list (relative path -> why)."""

    files: dict[str, str] = field(default_factory=dict)  # id -> path
    skipped: dict[str, str] = field(default_factory=dict)
    unreadable_folders: list[str] = field(default_factory=list)

    def under_unreadable(self, image_id: str) -> bool:
        """The id lies in a folder that could not be listed: its file may well still be
        there, so what the catalog knows of it is kept."""
        return any(image_id.startswith(f"{folder}/") for folder in self.unreadable_folders)


def scan_folder(root: Path) -> FolderScan:
    """Image files under `root`, recursively, in id order; hidden files and folders are
    left out on purpose and not reported. Plain strings, no `Path` a file: a million files
    scan in seconds, not a minute."""
    scan = FolderScan()
    top = os.fspath(root)

    def unreadable(error: OSError) -> None:
        folder = image_id(Path(error.filename).relative_to(root).as_posix())
        if folder == ".":  # the root itself: nothing to index, and a clear error
            raise error
        scan.unreadable_folders.append(folder)
        scan.skipped[f"{folder}/"] = f"folder cannot be read: {error.strerror}"

    found = {}
    for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = os.path.relpath(dirpath, top).replace(os.sep, "/")
        prefix = "" if folder == "." else f"{folder}/"
        for name in filenames:
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                found[image_id(prefix + name)] = os.path.join(dirpath, name)
            elif suffix in UNSUPPORTED_SUFFIXES:
                scan.skipped[image_id(prefix + name)] = (
                    f"unsupported format ({UNSUPPORTED_SUFFIXES[suffix]})")
    scan.files = dict(sorted(found.items()))
    return scan


def scan_paths(root: Path, paths: list[Path]) -> tuple[FolderScan, list[str]]:
    """Only these files and folders under `root`: their image files, as `scan_folder`
    finds them, and the scope they cover (an id, or a folder's id prefix ending in `/`),
    inside which what the catalog knows but the disk no longer has is gone. A path that
    does not exist covers both, the file or folder it was."""
    scan, scopes = FolderScan(), []
    top = root.resolve()
    for path in paths:
        absolute = Path(os.path.abspath(path))
        try:
            relative = absolute.relative_to(top).as_posix()
        except ValueError:
            raise LookalikeError(f"{path}: not under the collection's folder {top}") from None
        if absolute.is_dir():
            sub = scan_folder(absolute)
            prefix = "" if relative == "." else f"{image_id(relative)}/"
            scan.files.update((prefix + i, p) for i, p in sub.files.items())
            scan.skipped.update((prefix + i, why) for i, why in sub.skipped.items())
            scan.unreadable_folders += [prefix + f for f in sub.unreadable_folders]
            scopes.append(prefix)
            continue
        scopes.append(image_id(relative))
        if not os.path.lexists(absolute):
            scopes.append(f"{image_id(relative)}/")
        elif os.path.splitext(absolute.name)[1].lower() in IMAGE_SUFFIXES:
            scan.files[image_id(relative)] = os.fspath(absolute)
        else:
            scan.skipped[image_id(relative)] = "not an image lookalike reads"
    scan.files = dict(sorted(scan.files.items()))
    return scan, scopes


def scan_images(root: Path) -> dict[str, Path]:
    """Image files under `root`, recursively, keyed by their id."""
    return {i: Path(p) for i, p in scan_folder(root).files.items()}


def sha256_or_error(path: str | Path) -> str | OSError:
    """The file's sha256, or why it could not be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        return exc
    return digest.hexdigest()
