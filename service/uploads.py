"""Streaming multipart parsing with hard caps.

The request body is parsed as it arrives: the `file` part goes straight to a temporary file
(hashed on the way), small text fields are collected, and the upload is refused with
`PayloadTooLarge` the moment it passes the cap, without reading the rest of the body.
Unknown field names are refused as soon as their header is seen.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from musicedit.errors import InvalidRequest, MalformedRequest, PayloadTooLarge

if TYPE_CHECKING:  # defined for type checkers only
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
MAX_FIELD_BYTES = 16 * 1024
MAX_PARTS = 32
# Room for the text fields and multipart framing on top of the file cap.
MULTIPART_OVERHEAD_BYTES = MAX_PARTS * (MAX_FIELD_BYTES + 1024)


@dataclass
class MultipartUpload:
    """A parsed upload; `file_path` is a temporary file the caller must `cleanup()`."""

    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    file_name: str | None = None
    file_content_type: str | None = None
    file_size: int = 0
    file_sha256: str = ""

    def cleanup(self) -> None:
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


def sanitize_filename(name: str | None) -> str | None:
    """A display-only version of the client's file name: no directories, no control chars.

    It is only logged and echoed; object keys never derive from it.
    """
    if not name:
        return None
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .")
    return base[:100] or None


def check_content_length(header: str | None, max_file_bytes: int) -> None:
    """Refuse before reading anything when the declared body size is over the cap."""
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError as exc:
        raise MalformedRequest("Content-Length is not a number; send a valid header.") from exc
    if declared > max_file_bytes + MULTIPART_OVERHEAD_BYTES:
        raise _too_large(max_file_bytes)


def _too_large(max_file_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload is larger than the limit of {max_file_bytes} bytes "
        f"({max_file_bytes / 1e6:.1f} MB); send a shorter or compressed (FLAC/MP3) file.",
        max_file_bytes,
    )


class _Collector:
    """python-multipart callbacks writing into a `MultipartUpload`."""

    def __init__(
        self, upload: MultipartUpload, allowed: Collection[str], max_file_bytes: int, tmp_dir: Path
    ) -> None:
        self.upload = upload
        self.allowed = allowed
        self.max_file_bytes = max_file_bytes
        self.tmp_dir = tmp_dir
        self.parts = 0
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.current: str | None = None
        self.buffer = bytearray()
        self.file: BinaryIO | None = None
        self.hasher = hashlib.sha256()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidRequest(f"Too many form parts (limit {MAX_PARTS}).")
        self.headers = {}
        self.buffer = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = b""
        self.header_value = b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise MalformedRequest(
                "A multipart part has no `Content-Disposition: form-data; name=...` header."
            )
        field_name = name.decode("utf-8", "replace")
        if field_name not in self.allowed:
            raise InvalidRequest(
                f"Unknown form field {field_name[:50]!r}; allowed fields: "
                f"{', '.join(sorted(self.allowed))}.",
                [{"loc": ["body", field_name[:50]], "msg": "unknown field"}],
            )
        if field_name in self.upload.fields or (
            field_name == FILE_FIELD and self.upload.file_path is not None
        ):
            raise InvalidRequest(f"Form field {field_name!r} was sent twice; send it once.")
        self.current = field_name
        if field_name == FILE_FIELD:
            fd, path = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-")
            self.file = os.fdopen(fd, "wb")
            self.upload.file_path = Path(path)
            filename = options.get(b"filename")
            self.upload.file_name = sanitize_filename(
                filename.decode("utf-8", "replace") if filename else None
            )
            content_type = self.headers.get(b"content-type")
            self.upload.file_content_type = (
                content_type.decode("latin-1")[:100] if content_type else None
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.current == FILE_FIELD:
            self.upload.file_size += len(chunk)
            if self.upload.file_size > self.max_file_bytes:
                raise _too_large(self.max_file_bytes)
            self.hasher.update(chunk)
            assert self.file is not None
            self.file.write(chunk)
        else:
            self.buffer += chunk
            if len(self.buffer) > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"Form field {self.current!r} is longer than {MAX_FIELD_BYTES} bytes."
                )

    def on_part_end(self) -> None:
        if self.current == FILE_FIELD:
            assert self.file is not None
            self.file.close()
            self.file = None
            self.upload.file_sha256 = self.hasher.hexdigest()
        elif self.current is not None:
            try:
                self.upload.fields[self.current] = self.buffer.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequest(f"Form field {self.current!r} is not UTF-8 text.") from exc
        self.current = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


async def receive_multipart(
    content_type: str | None,
    body: AsyncIterator[bytes],
    *,
    allowed_fields: Collection[str],
    max_file_bytes: int,
    tmp_dir: Path,
) -> MultipartUpload:
    """Parse a multipart/form-data body from `body` chunks with the caps described above."""
    mime, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if mime != b"multipart/form-data":
        raise MalformedRequest(
            "The request body must be multipart/form-data with a `file` part and an "
            "`instruction` field."
        )
    if not boundary:
        raise MalformedRequest("The multipart Content-Type has no boundary parameter.")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    upload = MultipartUpload()
    collector = _Collector(upload, allowed_fields, max_file_bytes, tmp_dir)
    parser = MultipartParser(boundary, collector.callbacks())
    total = 0
    ended = False
    try:
        async for chunk in body:
            total += len(chunk)
            if total > max_file_bytes + MULTIPART_OVERHEAD_BYTES:
                raise _too_large(max_file_bytes)
            parser.write(chunk)
        parser.finalize()
        ended = parser.state == MultipartState.END
    except MultipartParseError as exc:
        collector.close()
        upload.cleanup()
        raise MalformedRequest(f"The multipart body is malformed ({exc}); resend it.") from exc
    except BaseException:
        collector.close()
        upload.cleanup()
        raise
    if not ended or collector.current is not None:
        upload.cleanup()
        raise MalformedRequest("The multipart body ended early (no closing boundary); resend it.")
    return upload
