"""A streaming ``multipart/form-data`` reader: one file field goes to disk as it arrives.

Feed it the request body chunk by chunk (``feed``); the bytes of the wanted
field are written to ``sink`` and hashed, never held whole in memory. Bytes
beyond ``max_bytes`` are counted but not written (``too_large``). Other fields
are read and dropped (at most 64 KiB each). ``finish()`` checks that the final
boundary arrived and the field was there.
"""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

_MAX_HEADERS = 16 * 1024
_MAX_OTHER_FIELD = 64 * 1024


class MultipartError(ValueError):
    pass


def boundary_of(content_type: str) -> bytes:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise MultipartError("request must be multipart/form-data")
    match = re.search(r'boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))', params)
    if not match:
        raise MultipartError("multipart/form-data without a boundary")
    return (match.group(1) or match.group(2)).encode("latin-1")


def _disposition(headers: bytes) -> dict[str, str]:
    for line in headers.decode("utf-8", "replace").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-disposition":
            return {k.lower(): v for k, v in re.findall(r';\s*([\w*]+)="?([^";]*)"?', value)}
    raise MultipartError("multipart part without Content-Disposition")


class MultipartFile:
    def __init__(self, boundary: bytes, field: str, sink: BinaryIO, max_bytes: int) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.field = field
        self.sink = sink
        self.max_bytes = max_bytes
        self.buf = bytearray(b"\r\n")  # so the first boundary looks like every other one
        self.state = "preamble"
        self.target: str | None = None  # "file" | "other" while in a body
        self.filename: str | None = None
        self.found = False
        self.size = 0
        self.other = 0
        self.sha256 = hashlib.sha256()

    @property
    def too_large(self) -> bool:
        return self.size > self.max_bytes

    def _emit(self, data) -> None:
        if not data:
            return
        if self.target == "file":
            self.size += len(data)
            if not self.too_large:
                self.sink.write(data)
                self.sha256.update(data)
        elif self.target == "other":
            self.other += len(data)
            if self.other > _MAX_OTHER_FIELD:
                raise MultipartError("a form field other than the file is too large")

    def feed(self, data: bytes) -> None:
        self.buf += data
        keep = len(self.delimiter) + 1
        while True:
            if self.state in ("preamble", "body"):
                idx = self.buf.find(self.delimiter)
                if idx < 0:
                    if len(self.buf) > keep:
                        cut = len(self.buf) - keep
                        if self.state == "body":
                            self._emit(self.buf[:cut])
                        del self.buf[:cut]
                    return
                if self.state == "body":
                    self._emit(self.buf[:idx])
                del self.buf[:idx + len(self.delimiter)]
                self.state, self.target = "delimiter", None
            elif self.state == "delimiter":
                if len(self.buf) < 2:
                    return
                if self.buf[:2] == b"--":
                    self.state = "done"
                    return
                if self.buf[:2] != b"\r\n":
                    raise MultipartError("malformed multipart boundary")
                del self.buf[:2]
                self.state = "headers"
            elif self.state == "headers":
                idx = self.buf.find(b"\r\n\r\n")
                if idx < 0:
                    if len(self.buf) > _MAX_HEADERS:
                        raise MultipartError("multipart part headers too large")
                    return
                params = _disposition(bytes(self.buf[:idx]))
                del self.buf[:idx + 4]
                if params.get("name") == self.field and not self.found:
                    self.found, self.target, self.filename = True, "file", params.get("filename") or ""
                else:
                    self.target, self.other = "other", 0
                self.state = "body"
            else:  # done: ignore the epilogue
                self.buf.clear()
                return

    def finish(self) -> None:
        if self.state != "done":
            raise MultipartError("multipart body ended before its final boundary")
        if not self.found:
            raise MultipartError(f"multipart field {self.field!r} is missing")
