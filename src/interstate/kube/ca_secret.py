"""The mesh CA in a Kubernetes Secret, so that every controller replica signs with the same one.

The Secret (type `kubernetes.io/tls`, cert-manager's layout: `tls.crt` the signing certificate
and any intermediates, `tls.key` its EC key, `ca.crt` the roots peers trust) is the operator's
own when it exists, and is created from a new root at first start otherwise. Two replicas racing
to create it: the API server lets one win (409 for the other, which then reads the winner's).
The files are written (0600, in a 0700 folder) where the core's `IdentitySettings` reads an
operator's CA from. RBAC: get and create of Secrets in the controller's namespace only.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from interstate.ca.authority import Authority
from interstate.core.identity import IdentitySettings
from interstate.errors import TemporaryError

FILES = {"tls.crt": "ca-cert.pem", "tls.key": "ca-key.pem", "ca.crt": "ca-bundle.pem"}


def _secret(namespace: str, name: str, authority: Authority) -> dict[str, Any]:
    data = {"tls.crt": authority.signing_pem, "tls.key": authority.key_pem, "ca.crt": authority.bundle_pem}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "interstate"}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


async def load_or_create(
    client: httpx.AsyncClient,
    namespace: str,
    name: str,
    trust_domain: str,
    folder: Path,
    settings: IdentitySettings,
    now: datetime,
) -> IdentitySettings:
    """`settings` signing with the CA of Secret `namespace/name` (created when absent), its
    files written into `folder`. TemporaryError when the API server cannot say."""
    path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
    response = await client.get(path)
    if response.status_code == 404:
        created = await client.post(
            f"/api/v1/namespaces/{namespace}/secrets",
            json=_secret(namespace, name, Authority.create(trust_domain, now)),
        )
        if created.status_code not in (201, 409):  # 409: another replica created it first
            raise TemporaryError(
                f"cannot create the CA Secret {namespace}/{name}: {created.status_code} {created.text[:200]}"
            )
        response = await client.get(path)
    if response.status_code != 200:
        raise TemporaryError(
            f"cannot read the CA Secret {namespace}/{name}: {response.status_code} {response.text[:200]}"
        )
    data = response.json().get("data") or {}
    missing = [key for key in ("tls.crt", "tls.key") if key not in data]
    if missing:
        raise TemporaryError(f"the CA Secret {namespace}/{name} has no {' or '.join(missing)} (cert-manager's layout)")
    written = _write(folder, data)
    return dataclasses.replace(
        settings, ca_cert=written["tls.crt"], ca_key=written["tls.key"], ca_bundle=written.get("ca.crt")
    )


def _write(folder: Path, data: dict[str, str]) -> dict[str, Path]:
    """The Secret's entries as files (0600 in a 0700 folder): {key: path}."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    written = {}
    for key, file in FILES.items():
        if key in data:
            target = folder / file
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(base64.b64decode(data[key]))
            written[key] = target
    return written
