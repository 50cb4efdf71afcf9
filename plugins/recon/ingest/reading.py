"""Opening a statement or report file, whatever its format: a path, a binary stream or the bytes
themselves, never a text stream; size-limited as it is read (the limit named in its error), and
closed only when it was opened here. Every format module reads its input through here.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, Protocol, Union

from recon.errors import InvalidInputError

FileSource = Union[bytes, str, "os.PathLike[str]", BinaryIO]  # bytes are the content, str a path
_UTF8_BOM = b"\xef\xbb\xbf"


@contextmanager
def open_binary(
    source: FileSource, what: str, max_bytes: int, *, limit_name: str = "MAX_FILE_BYTES",
    utf8_only: bool = False, buffer_size: int = io.DEFAULT_BUFFER_SIZE,
) -> Iterator[io.BufferedReader]:
    """A buffered binary view of `source` that refuses more than `max_bytes` (and, with
    `utf8_only`, any byte that is not UTF-8, naming its line) as it reads. `what` names the kind
    of file in errors ("CSV", "camt.053", ...)."""
    raw, opened = _raw(source, what)
    stream = io.BufferedReader(_CheckedReader(raw, what, max_bytes, limit_name, utf8_only), buffer_size=buffer_size)
    try:
        yield stream
    finally:
        if opened:
            raw.close()


def read_text(source: FileSource, what: str, max_bytes: int, *, limit_name: str, encoding: str = "utf-8") -> str:
    """The whole source as text, strictly decoded (a UTF-8 BOM dropped), for formats whose parser
    package needs the whole text. A byte that is not `encoding` is an error naming its line."""
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise InvalidInputError(f"unknown encoding {encoding!r}") from None
    with open_binary(source, what, max_bytes, limit_name=limit_name) as stream:
        data = stream.read()
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise InvalidInputError(
            f"line {line} of the {what} file contains a NUL byte: it is binary or UTF-16 text, not a {what} file"
        )
    if codec.name == "utf-8":
        data = data.removeprefix(_UTF8_BOM)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInputError(
            f"line {line} of the {what} file is not {encoding} text (byte 0x{data[exc.start]:02x} cannot be"
            f" decoded); if the bank sends another encoding, name it (e.g. encoding='latin-1')"
        ) from None


def _raw(source: FileSource, what: str) -> tuple[BinaryIO, bool]:
    """(stream, opened here) for bytes, a path or a binary stream."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), True
    if isinstance(source, io.TextIOBase):
        raise InvalidInputError(f"expected the {what} file's path or a binary stream (open it in 'rb' mode), got text")
    if isinstance(source, (str, os.PathLike)):
        try:
            return open(source, "rb"), True
        except OSError as exc:
            raise InvalidInputError(f"cannot open {what} file {os.fspath(source)!r}: {exc.strerror}") from None
    if hasattr(source, "read"):
        return source, False
    raise InvalidInputError(f"expected the {what} file's bytes, path or binary stream, got {type(source).__name__}")


class _CheckedReader(io.RawIOBase):
    """Passes the caller's bytes through, counting them against the limit (and checking UTF-8)."""

    def __init__(self, raw: BinaryIO, what: str, max_bytes: int, limit_name: str, utf8_only: bool):
        self._raw = raw
        self._what = what
        self._max_bytes = max_bytes
        self._limit_name = limit_name
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict") if utf8_only else None
        self._bytes_read = 0
        self._line = 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        if isinstance(data, str):
            raise InvalidInputError(f"expected a binary stream of the {self._what} file (open it in 'rb' mode), got text")
        self._bytes_read += len(data)
        if self._bytes_read > self._max_bytes:
            raise InvalidInputError(
                f"the {self._what} file is larger than {self._max_bytes:,} bytes ({self._limit_name}); split it"
            )
        if self._decoder is not None:
            self._check_utf8(data)
        buffer[: len(data)] = data
        return len(data)

    def _check_utf8(self, data: bytes) -> None:
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            offset = max(exc.start - pending, 0)
            line = self._line + data[:offset].count(b"\n")
            raise InvalidInputError(
                f"line {line} of the {self._what} file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot"
                " be decoded): the format requires UTF-8"
            ) from None
        self._line += data.count(b"\n")


class CsvLines(Protocol):
    """Physical lines fed to csv.reader that know where they are and bound each record's size."""

    line_number: int

    def record_done(self) -> None:
        """A record ended: the next one starts counting its size from zero."""


def csv_records(reader: Iterator[list[str]], lines: CsvLines) -> Iterator[list[str]]:
    """csv records, with file-level errors (an open quote at the end...) turned into
    InvalidInputError naming the line."""
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            hint = ": the file ends inside a quoted cell, is it cut short?" if "unexpected end" in str(exc) else ""
            raise InvalidInputError(f"line {lines.line_number}: not valid CSV ({exc}){hint}") from None
        lines.record_done()
        yield values
