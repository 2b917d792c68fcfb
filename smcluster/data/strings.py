"""A compact, fork-friendly table of many strings (image ids and file paths)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class StringTable:
    """Strings packed into one UTF-8 byte array plus an offsets array.

    A Python list of 1.3 million path strings is 1.3 million objects; DataLoader workers forked
    from the main process touch their reference counts and so copy the pages they live on, one
    worker at a time. Two numpy arrays have no per-string objects and stay shared.
    """

    def __init__(self, strings: Iterable[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, stop = self._offsets[i], self._offsets[i + 1]
        return self._buffer[start:stop].tobytes().decode("utf-8")

    def take(self, indices: np.ndarray) -> StringTable:
        """The strings at ``indices`` (int64 array), in that order."""
        return StringTable(self[int(i)] for i in indices)

    def tolist(self) -> list[str]:
        raw = self._buffer.tobytes()
        offsets = self._offsets.tolist()
        return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
