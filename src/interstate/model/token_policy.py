"""The `TokenPolicy` resource: JWT checks at the ingress, before any app sees a request.

    spec.issuers[].issuer       the token's `iss`
    spec.issuers[].audiences    accepted `aud` values (one must match)
    spec.issuers[].jwks         the issuer's public keys: `inline` JSON or a `file` (JWKS)
    spec.roleClaim              the claim that lists a token's roles (default `roles`)
    spec.require[].pathPrefix   gateway paths that need a valid token
    spec.require[].roles        optional: the token must carry one of these roles

A request to a required path without a token, or with an expired, wrongly signed, wrong-issuer
or wrong-audience token, gets 401. A valid token without a listed role gets 403. Paths no
TokenPolicy requires are not checked. JWKS files are read when the mesh files are loaded
(relative to the file that names them), so the compiled config carries the keys themselves.

A JWKS is small: at most `MAX_JWKS_BYTES`, nested at most `MAX_JWKS_DEPTH` deep, checked before
it is parsed. A `file` must be a regular file (never a device or a FIFO), is read no further than
that limit, and is not read at all for a Kubernetes custom resource (it would be a file of the
controller's own machine). No message quotes what a JWKS holds: the file may be any file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from interstate.model.base import Claim, PathPrefix, Resource, Strict

JWKS_KEY_TYPES = ("RSA", "EC", "OKP")
# A JWKS of a few keys is 1-10 KiB, one with certificate chains (x5c) for a dozen keys ~40 KiB.
MAX_JWKS_BYTES = 64 * 1024
# {"keys": [{"x5c": [...]}]} is 4 levels deep; json.loads recurses once per level.
MAX_JWKS_DEPTH = 8
# Members of a private JWK (RFC 7518 section 6): an ingress needs public keys only.
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def _too_large(count: str) -> str:
    return f"{count} bytes is over the limit of {MAX_JWKS_BYTES // 1024} KiB for a JWKS (public keys take a few KiB)"


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in JSON `text` (brackets inside strings skipped), counted
    without parsing: json.loads recurses once per level. Exact for any prefix that is valid JSON,
    so json.loads never goes deeper than this says before it fails."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JWKS_DEPTH:
                    break
        elif char in "]}":
            depth -= 1
    return deepest


def check_jwks(text: str) -> str:
    """`text` when it is a JWKS of public keys; a ValueError saying what is wrong otherwise, which
    never quotes `text` (it may have been read from any file)."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800" in YAML): Envoy takes UTF-8 only
        raise ValueError(f"not a valid JWKS: not UTF-8 text (character {exc.start:,})") from None
    if size > MAX_JWKS_BYTES:
        raise ValueError(_too_large(f"{size:,}"))
    if _nesting(text) > MAX_JWKS_DEPTH:
        raise ValueError(f"not a valid JWKS: nested more than {MAX_JWKS_DEPTH} levels deep")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:  # its message says where, never what
        raise ValueError(f"not a valid JWKS: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except ValueError:  # a number of more than 4,300 digits
        raise ValueError("not a valid JWKS: not JSON (a number too long)") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError('a JWKS needs a non-empty "keys" list, e.g. {"keys": [{"kty": "RSA", ...}]}')
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or key.get("kty") not in JWKS_KEY_TYPES:
            raise ValueError(f"keys[{i}]: kty must be one of {', '.join(JWKS_KEY_TYPES)}")
        private = [member for member in PRIVATE_MEMBERS if member in key]
        if private:
            raise ValueError(
                f"keys[{i}]: a private key (it has {', '.join(repr(m) for m in private)}); give the public keys only, "
                "as the issuer publishes them"
            )
    return text


def read_jwks_file(path: Path) -> str:
    """The text of a JWKS file: a regular file (a FIFO, a device or a folder is refused before it
    is opened, and again once open, in case one was swapped in), at most `MAX_JWKS_BYTES` read.
    ValueError saying what is wrong otherwise, never quoting the file."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(before.st_mode):
        raise ValueError(f"is {_what(before.st_mode)}, not a file; give a JWKS file")
    if before.st_size > MAX_JWKS_BYTES:
        raise ValueError(_too_large(f"{before.st_size:,}"))
    chunks: list[bytes] = []
    size = 0
    try:
        fd = os.open(path, _OPEN_FLAGS)  # O_NONBLOCK: a FIFO swapped in since stat() cannot block us
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                raise ValueError(f"is {_what(opened.st_mode)}, not a file; give a JWKS file")
            while size <= MAX_JWKS_BYTES:  # a file that grew, or a /proc file of size 0, stops here
                chunk = os.read(fd, MAX_JWKS_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from None
    if size > MAX_JWKS_BYTES:
        raise ValueError(_too_large(f"more than {MAX_JWKS_BYTES:,}"))
    try:
        return b"".join(chunks).decode("utf-8-sig")  # a byte order mark is not part of the JSON
    except UnicodeDecodeError as exc:
        raise ValueError(f"not a valid JWKS: not UTF-8 text (byte {exc.start:,})") from None


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _name(path: Path) -> str:
    """A file name for a message: as written, or its repr when it holds a control character."""
    text = str(path)
    return text if text.isprintable() else repr(text)


class Jwks(Strict):
    inline: str | None = None
    file: str | None = None
    _text: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> Jwks:
        if (self.inline is None) == (self.file is None):
            raise ValueError("give exactly one of inline or file")
        if self.inline is not None:
            try:
                self._text = check_jwks(self.inline)
            except ValueError as exc:
                raise ValueError(f"inline: {exc}") from None
            return self
        assert self.file is not None
        context: dict[str, Any] = info.context or {}
        if context.get("kubernetes"):
            raise ValueError(
                "file: not read for a Kubernetes resource (it would be a file of the controller's own "
                "machine); put the JWKS in jwks.inline"
            )
        path = Path(self.file)
        if not path.is_absolute():
            path = Path(context.get("base_dir") or ".") / path
        try:
            self._text = check_jwks(read_jwks_file(path))
        except ValueError as exc:  # also os.stat's for a NUL character in the name
            raise ValueError(f"file: {_name(path)}: {exc}") from None
        return self

    @property
    def text(self) -> str:
        """The JWKS JSON itself (read from `file` at load time)."""
        return self._text


class Issuer(Strict):
    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(min_length=1)
    jwks: Jwks


class Requirement(Strict):
    path_prefix: PathPrefix
    roles: list[str] = Field(default_factory=list)


class TokenPolicySpec(Strict):
    issuers: list[Issuer] = Field(min_length=1)
    role_claim: str = Field(default="roles", pattern=r"^[A-Za-z0-9_.:-]+$")
    require: list[Requirement] = Field(min_length=1)

    @field_validator("issuers")
    @classmethod
    def _unique_issuers(cls, issuers: list[Issuer]) -> list[Issuer]:
        seen = [i.issuer for i in issuers]
        for i, name in enumerate(seen):
            if name in seen[:i]:
                raise ValueError(f"issuer {name!r} is listed twice")
        return issuers


class TokenPolicy(Resource):
    KIND: ClassVar[str] = "TokenPolicy"

    spec: TokenPolicySpec

    def claims(self) -> Iterable[Claim]:
        for i, req in enumerate(self.spec.require):
            yield Claim(
                f"spec.require[{i}].pathPrefix",
                f"TokenPolicy/{req.path_prefix}",
                f"the token rule for {req.path_prefix!r}",
            )
        for i, issuer in enumerate(self.spec.issuers):
            yield Claim(f"spec.issuers[{i}].issuer", f"TokenIssuer/{issuer.issuer}", f"issuer {issuer.issuer!r}")
