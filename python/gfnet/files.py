"""Writing files the way every gfnet command does: atomically, never through a symbolic link,
never over a file the user owns, and with a clear error when the disk is full.

- :func:`write_atomic` writes bytes to a temporary file created beside the destination
  (exclusively, so it is never a link someone placed), fsyncs it and renames it over the
  destination: a reader sees the old file or the new one, never a part. The rename replaces a
  link at the destination by the file; the link's target is never written. On any failure the
  temporary file is removed and the destination is left as it was.
- A full disk (or quota) is a ``GFNetError`` (or the error class the caller names, e.g.
  ``CheckpointError``) saying "no space left on device" and naming the file, not a traceback.
- :class:`OutputFolder` is the folder a command writes its results into (``--out``): only
  plain names inside it, each written with :func:`write_atomic`. A file the command wrote
  before (listed, with its sha256, in the folder's manifest ``.gfnet-outputs.json``) is
  replaced freely, so reruns work; anything else already at a name (a user's file, a link, a
  folder, or one of our files changed since) is refused unless ``force=True``, which replaces
  files and links (never a folder, never a link's target).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import GFNetError

# errno values meaning "the disk (or the user's quota) is full"
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
MANIFEST = ".gfnet-outputs.json"


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def disk_full_message(path: str | Path, size: int | None = None) -> str:
    what = f" ({size} bytes)" if size is not None else ""
    return (f"no space left on device writing {str(path)!r}{what}: free some space (or raise the quota) "
            "and run again; the file was left as it was before")


def _remove_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview, *,
                 error: type[GFNetError] = GFNetError) -> Path:
    """``data`` into ``path`` atomically (module docstring); a full disk is ``error``."""
    path = Path(path)
    view = memoryview(data).cast("B")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            _remove_quietly(tmp)
        if is_disk_full(e):
            raise error(disk_full_message(path, len(memoryview(data).cast("B")))) from None
        raise
    _fsync_folder(path.parent)
    return path


def sha256_of(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class OutputFolder:
    """The folder a command writes its results into (module docstring)."""

    def __init__(self, folder: str | Path, *, force: bool = False, command: str = "gfnet"):
        self.path = Path(folder)
        self.force = force
        self.command = command
        if self.path.exists() and not self.path.is_dir():
            raise GFNetError(f"--out {str(self.path)!r} is a file, not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if is_disk_full(e):
                raise GFNetError(disk_full_message(self.path)) from None
            raise GFNetError(f"cannot create the output folder {str(self.path)!r} ({e.strerror})") from None
        self._ours = self._read_manifest()

    def _read_manifest(self) -> dict[str, str]:
        """name -> sha256 of the files an earlier run of a gfnet command wrote here."""
        m = self.path / MANIFEST
        if m.is_symlink() or not m.is_file():
            return {}
        try:
            d = json.loads(m.read_text())
        except (OSError, ValueError):
            return {}
        files = d.get("files") if isinstance(d, dict) else None
        if not isinstance(files, dict):
            return {}
        return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)}

    def _is_ours(self, name: str, target: Path) -> bool:
        """Whether ``target`` is a plain file a gfnet command wrote, unchanged since."""
        digest = self._ours.get(name)
        if digest is None or target.is_symlink() or not target.is_file():
            return False
        try:
            return sha256_of(target.read_bytes()) == digest
        except OSError:
            return False

    def target(self, name: str) -> Path:
        """Where ``name`` goes, after checking that writing there is allowed (a GFNetError saying
        why not: a name that is not plain, a folder, or a file not ours without force)."""
        if not name or name in (".", "..", MANIFEST) or "/" in name or os.sep in name or "\0" in name:
            raise GFNetError(f"{name!r} is not a plain file name for the output folder {str(self.path)!r}")
        target = self.path / name
        if target.is_symlink() or target.exists():
            if target.is_dir() and not target.is_symlink():
                raise GFNetError(f"{str(target)!r} is a folder; {self.command} writes a file of that name there: "
                                 "move the folder or choose another --out")
            if not self.force and not self._is_ours(name, target):
                kind = "a symbolic link" if target.is_symlink() else "a file this command did not write"
                raise GFNetError(f"{str(target)!r} is {kind}; {self.command} does not replace it: move it, choose "
                                 "another --out, or pass --force to replace it (a link is replaced, never "
                                 "its target)")
        return target

    def write(self, name: str, data: bytes | bytearray | memoryview) -> Path:
        """Writes ``data`` as ``name`` in the folder (atomically; recorded as ours)."""
        target = write_atomic(self.target(name), data)
        self._ours[name] = sha256_of(data)
        self._save_manifest()
        return target

    def write_text(self, name: str, text: str) -> Path:
        return self.write(name, text.encode("utf-8"))

    def _save_manifest(self) -> None:
        body = json.dumps({"written_by": "gfnet", "files": dict(sorted(self._ours.items()))}, indent=1)
        write_atomic(self.path / MANIFEST, body.encode("utf-8"))


__all__ = ["DISK_FULL_ERRNOS", "MANIFEST", "OutputFolder", "disk_full_message", "is_disk_full", "sha256_of",
           "write_atomic"]
