"""Where undelivered lines go, verbatim, so they can be piped in again later."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, TextIO

from publisher.delivery.items import Line


class DeadLetter:
    """Appends to a file (a previous run's dead letters are data too), else writes to stderr."""

    def __init__(self, path: Path | None, err: TextIO) -> None:
        self.path = path
        self.err = err
        self._file: BinaryIO | None = None

    def write(self, lines: Iterable[Line]) -> None:
        data = b"".join(line.raw + b"\n" for line in lines)
        if not data:
            return
        if self.path is not None:
            if self._file is None:
                # Append: a previous run's dead letters are data too.
                self._file = self.path.open("ab")
            self._file.write(data)
            self._file.flush()
            return
        buffer = getattr(self.err, "buffer", None)
        self.err.flush()
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            self.err.write(data.decode("utf-8", "replace"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
