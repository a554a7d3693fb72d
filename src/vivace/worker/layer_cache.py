"""The worker's layer cache, kept under a size by garbage collection (least recently used first).

Unpacked layers live in ``<images>/layers/<key>`` (built, fetched, or attached files) and pulled
registry layers in ``<images>/pulls/sha256-<hex>``. Beside them, ``<images>/layers.meta`` records each
entry's size on disk (measured once, when first seen) and when it was last used. :meth:`collect` removes
the least recently used entries until the cache fits ``max_bytes``, never one that is pinned (a
container or a build uses it) or that the caller names as in use (the warm pool's images). A removed
entry is first renamed to a hidden name, so a concurrent lookup sees it either whole or gone, and its
idmapped views (``layers.idmap-<runtime>/<key>``) are unmounted first. Everything it removes can be
fetched again from the blob store.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vivace.worker")

DEFAULT_MAX_GB = 50.0


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int
    used: float


class LayerCache:
    def __init__(self, images_dir: Path, max_bytes: int) -> None:
        self.images = images_dir
        self.dirs = (images_dir / "layers", images_dir / "pulls")
        self.meta = images_dir / "layers.meta"
        self.max_bytes = max_bytes
        self.pins: collections.Counter[Path] = collections.Counter()
        self._lock = threading.Lock()  # pins change on the event loop; collect runs in a thread

    # -- use ----------------------------------------------------------------------------------------
    def pin(self, paths: Iterable[Path]) -> None:
        """Mark ``paths`` in use (a container runs on them, a build stacks them) and just used. Pin a
        layer before fetching it: a collection running meanwhile then leaves it alone."""
        paths = list(paths)
        with self._lock:
            for p in paths:
                self.pins[p] += 1
        self.touch(paths)

    def unpin(self, paths: Iterable[Path]) -> None:
        with self._lock:
            for p in paths:
                self.pins[p] -= 1
                if self.pins[p] <= 0:
                    del self.pins[p]

    def touch(self, paths: Iterable[Path]) -> None:
        now = time.time()
        for p in paths:
            if p.parent in self.dirs:
                meta = self._read(p)
                meta["used"] = now
                self._write(p, meta)

    # -- collection ----------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        out = []
        for d in self.dirs:
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.name.startswith(".") or not p.is_dir():
                    continue
                meta = self._read(p)
                if "size" not in meta:  # measured once
                    meta["size"] = _disk_usage(p)
                    meta.setdefault("used", p.stat().st_mtime)
                    self._write(p, meta)
                out.append(Entry(p, int(meta["size"]), float(meta.get("used", 0.0))))
        return out

    def collect(self, in_use: Iterable[Path] = ()) -> list[Entry]:
        """Remove least recently used entries until the cache fits; returns what it removed."""
        in_use = set(in_use)
        entries = self.entries()
        total = sum(e.size for e in entries)
        removed: list[Entry] = []
        for entry in sorted(entries, key=lambda e: e.used):
            if total <= self.max_bytes:
                break
            with self._lock:  # checked and hidden at once: a pin after this finds it gone and refetches
                if entry.path in self.pins or entry.path in in_use:
                    continue
                trash = self._hide(entry.path)
            self._destroy(entry.path, trash)
            total -= entry.size
            removed.append(entry)
        if removed:
            log.info(
                "layer cache: removed %d least recently used layer(s), %.1f MB; %.1f MB of %.1f MB kept",
                len(removed), sum(e.size for e in removed) / 1e6, total / 1e6, self.max_bytes / 1e6,
            )  # fmt: skip
        return removed

    def _hide(self, path: Path) -> Path:
        trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex[:6]}"
        path.rename(trash)
        return trash

    def _destroy(self, path: Path, trash: Path) -> None:
        from vivace.worker.runtimes.oci import mounted_under, unmount

        for view in self.images.glob(f"layers.idmap-*/{path.name}"):
            if view in mounted_under(view.parent):
                unmount(view)
            with contextlib.suppress(OSError):
                view.rmdir()
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self._meta_path(path).unlink()

    def sweep_trash(self) -> None:
        """Finish removals a crash interrupted."""
        for d in self.dirs:
            if d.is_dir():
                for p in d.glob(".trash-*"):
                    shutil.rmtree(p, ignore_errors=True)

    # -- metadata ------------------------------------------------------------------------------------
    def _meta_path(self, path: Path) -> Path:
        return self.meta / f"{path.parent.name}-{path.name}.json"

    def _read(self, path: Path) -> dict[str, float]:
        try:
            data = json.loads(self._meta_path(path).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write(self, path: Path, meta: dict[str, float]) -> None:
        self.meta.mkdir(parents=True, exist_ok=True)
        target = self._meta_path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_text(json.dumps(meta))
        tmp.replace(target)


def _disk_usage(root: Path) -> int:
    """Bytes the tree occupies (allocated blocks; each hard-linked inode counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
    return total
