"""SHA256 of data files, remembered between runs (hashing a whole data set takes minutes).

A remembered hash is reused only while the file keeps its size and modification time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PancreasAILib.weights import sha256_of_file

from .checkpoint import write_json_atomically


class FileHashes:
    """`hashes.sha256(path)`; `hashes.save()` keeps them in a JSON file for the next run."""

    def __init__(self, store: Path | None) -> None:
        self.store = store
        self._known: dict[str, list] = {}
        if store is not None and store.exists():
            try:
                self._known = json.loads(store.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._known = {}  # a damaged store only costs re-hashing

    def sha256(self, path: Path) -> str:
        path = Path(path).resolve()
        status = os.stat(path)
        stamp = [status.st_size, status.st_mtime_ns]
        known = self._known.get(str(path))
        if known and known[:2] == stamp:
            return known[2]
        digest = sha256_of_file(path)
        self._known[str(path)] = [*stamp, digest]
        return digest

    def save(self) -> None:
        if self.store is not None:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(self.store, self._known)
