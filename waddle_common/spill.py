"""What a load keeps on disk instead of in memory: arrays (the cross-chunk state of
cleansing.FileState) and frames that wait for the end of a file (rejects, pending bookings).

Both live in temporary files that have no name, so a killed load leaves nothing behind.
"""

from __future__ import annotations

import pickle
import tempfile

import numpy as np


class SpilledArrays:
    """cleansing's ArrayStore in temporary files: put() writes each array to a file that has
    no name (a killed load leaves nothing behind), open() maps it. The state that grows with
    a file (FirstSeen's runs, the known customers' ids) thus leaves the process's memory once
    searched; the page cache keeps it while memory allows."""

    def __init__(self):
        self.live: set = set()  # the files of the runs kept: close() closes those left

    def put(self, arrays: tuple[np.ndarray, ...]) -> tuple[tuple, ...]:
        handle = []
        for array in arrays:
            file = tempfile.TemporaryFile(prefix="waddle-state-")  # noqa: SIM115  closed by drop() or close()
            self.live.add(file)
            np.ascontiguousarray(array).tofile(file)
            file.flush()
            handle.append((file, array.dtype, len(array)))
        return tuple(handle)

    def open(self, handle: tuple[tuple, ...]) -> tuple[np.ndarray, ...]:
        return tuple(np.memmap(file, dtype=dtype, mode="r", shape=(length,)) if length else np.empty(0, dtype)
                     for file, dtype, length in handle)

    def drop(self, handle: tuple[tuple, ...]) -> None:
        for file, _, _ in handle:  # a mapping still open stays valid until it is dropped
            self.live.discard(file)
            file.close()

    def close(self) -> None:
        for file in self.live:
            file.close()
        self.live.clear()


class Spool:
    """Frames (or other objects) written to a temporary file and read back in order: what
    waits for the end of a file without staying in memory."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="waddle-spool-")  # noqa: SIM115  closed by close()
        self.count = 0

    def add(self, item) -> None:
        pickle.dump(item, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1

    def __iter__(self):
        self._file.seek(0)
        for _ in range(self.count):
            yield pickle.load(self._file)

    def close(self) -> None:
        self._file.close()
