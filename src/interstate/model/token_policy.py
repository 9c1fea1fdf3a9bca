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
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from interstate.model.base import Claim, PathPrefix, Resource, Strict

JWKS_KEY_TYPES = ("RSA", "EC", "OKP")


def check_jwks(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError('a JWKS needs a non-empty "keys" list, e.g. {"keys": [{"kty": "RSA", ...}]}')
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or key.get("kty") not in JWKS_KEY_TYPES:
            raise ValueError(f"keys[{i}]: kty must be one of {', '.join(JWKS_KEY_TYPES)}")
    return text


class Jwks(Strict):
    inline: str | None = None
    file: str | None = None
    _text: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> Jwks:
        if (self.inline is None) == (self.file is None):
            raise ValueError("give exactly one of inline or file")
        if self.inline is not None:
            self._text = check_jwks(self.inline)
            return self
        assert self.file is not None
        context: dict[str, Any] = info.context or {}
        path = Path(self.file)
        if not path.is_absolute():
            path = Path(context.get("base_dir", ".")) / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"file: cannot read {path}: {exc.strerror}") from None
        try:
            self._text = check_jwks(text)
        except ValueError as exc:
            raise ValueError(f"file: {path}: {exc}") from None
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
