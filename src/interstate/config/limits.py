"""How much input the config layer reads, in one place, and how echoed input is kept short.

Used by `config.documents` (while YAML is read), `config.loader` (files, sources, issues) and the
admin API (`RequestBody`, before a request body is read whole). The limits are fixed: far above
what a mesh needs (the example mesh is 2 KB in 5 files), far below what takes a machine down.
README.md ("Limits") lists them; a refusal names the limit and says what to do instead.
"""

from __future__ import annotations

import reprlib
from typing import Any

from interstate.errors import ConfigError, Issue

KIB = 1024
MIB = 1024 * KIB

# Sizes, checked before anything is parsed.
MAX_FILE_BYTES = 4 * MIB  # one mesh file (UTF-8 bytes)
MAX_MESH_BYTES = 8 * MIB  # all files of one mesh: a folder, one `apply`, one cluster's resources
MAX_FILES = 10_000  # files (sources) of one mesh
MAX_NAME_CHARS = 4096  # a file name (PATH_MAX); longer ones come only from a hand-made request
# An admin API request carrying a mesh: JSON escaping can double a YAML text (every "\n" or '"'
# takes two bytes), plus room for file names and the envelope.
MAX_REQUEST_BYTES = 2 * MAX_MESH_BYTES + MIB

# Shapes, checked while the YAML is read, before any value is expanded or validated.
MAX_DOCUMENTS = 1_000  # YAML documents in one file
MAX_MESH_DOCUMENTS = 10_000  # YAML documents in one mesh
MAX_DEPTH = 32  # nesting of one value (a mesh resource needs about 8)
MAX_VALUE_CHARS = 128 * KIB  # one scalar (also Linux's limit on one argument or environment string)
# Values (scalars, lists, mappings, keys) after aliases are expanded: an alias counts as every
# value it repeats, so an alias bomb ("billion laughs") is refused while it is read.
MAX_DOCUMENT_VALUES = 20_000  # in one document (a Gateway of 4,000 routes fits)
MAX_MESH_VALUES = 500_000  # in one mesh
MAX_ALIAS_VALUES = 10_000  # repeated by aliases (*name) in one mesh: plenty for shared blocks

# Reports.
MAX_ISSUES = 100  # issues in one report; the rest are counted, not listed
MAX_ECHO_CHARS = 80  # a value of the input quoted in a message
MAX_MESSAGE_CHARS = 600  # one issue's message, whatever a validator put in it
MAX_FIELD_CHARS = 300  # one issue's field path

FIXED = "a fixed limit, see Limits in README.md"

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = MAX_ECHO_CHARS
_REPR.maxother = MAX_ECHO_CHARS
_REPR.maxlong = MAX_ECHO_CHARS


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to its first `limit` characters, marked with '…' when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_middle(text: str, limit: int) -> str:
    """`text` with its middle cut out when longer than `limit`: the start says what is wrong,
    the end usually says what would be valid."""
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return text[:half] + "…" + text[len(text) - (limit - 1 - half) :]


def show(value: Any) -> str:
    """A short repr of a value from the input, however large or deeply nested the value is."""
    return clip(_REPR.repr(value))


def bounded(issue: Issue) -> Issue:
    """`issue` with its resource, field and message cut to a readable length."""
    resource = clip(issue.resource, 2 * MAX_ECHO_CHARS + 1)
    field = clip_middle(issue.field, MAX_FIELD_CHARS)
    message = clip_middle(issue.message, MAX_MESSAGE_CHARS)
    if (resource, field, message) == (issue.resource, issue.field, issue.message):
        return issue
    return Issue(issue.file, issue.document, resource, field, message)


def size(count: int) -> str:
    """4194304 -> '4 MiB', 2000 -> '2,000 bytes'."""
    if count >= MIB and count % MIB == 0:
        return f"{count // MIB} MiB"
    return f"{count:,} bytes"


class RequestBody:
    """A request body collected chunk by chunk, refused as soon as it passes `limit`.

    For the admin API, before a mesh is read from a request:

        body = RequestBody(request.headers.get("content-length"))   # ConfigError: too large
        async for chunk in request.stream():
            body.add(chunk)                                          # ConfigError: too large
        data = json.loads(body.data())

    A refusal is a `ConfigError` with one issue whose file is "request body" (HTTP 413).
    """

    def __init__(self, content_length: str | None, limit: int = MAX_REQUEST_BYTES) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        if content_length is not None:
            digits = content_length.strip().lstrip("0") or "0"
            if not (digits.isascii() and digits.isdigit()):
                raise ConfigError([Issue("request body", 0, "", "", "Content-Length is not a number of bytes")])
            if len(digits) > len(str(limit)) or int(digits) > limit:  # no int() of a thousand digits
                raise self._too_large(int(digits[:19]), at_least=len(digits) > 19)

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.limit:
            self._chunks.clear()
            raise self._too_large(self._size, at_least=True)
        self._chunks.append(chunk)

    def data(self) -> bytes:
        return b"".join(self._chunks)

    def _too_large(self, count: int, at_least: bool = False) -> ConfigError:
        more = "at least " if at_least else ""
        return ConfigError(
            [
                Issue(
                    "request body",
                    0,
                    "",
                    "",
                    f"{more}{count:,} bytes is over the limit of {size(self.limit)} for one request "
                    f"({FIXED}); a mesh may be at most {size(MAX_MESH_BYTES)} of YAML",
                )
            ]
        )
