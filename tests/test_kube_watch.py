"""kube/watch.py against a fake kube-apiserver (tests/helpers_kube.py: real HTTPS on 127.0.0.1,
Kubernetes' list/watch JSON protocol, fixtures from tests/fixtures/kube/). There is no real
API server on this machine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers_kube import TOKEN, FakeApiServer, fake_apiserver
from helpers_xds import run, wait_until

from interstate.kube.watch import ApiSettings, ResourceType, Watcher

FIXTURES = Path(__file__).parent / "fixtures" / "kube"
SLICES = ResourceType("discovery.k8s.io/v1", "EndpointSlice", "endpointslices")
PATH = SLICES.path


def settings(api: FakeApiServer, **overrides: Any) -> ApiSettings:
    base: dict[str, Any] = {"token": TOKEN, "ca_file": api.ca_file, "page_size": 2, "backoff_s": 0.05}
    return ApiSettings(api.url, **{**base, **overrides})


@contextlib.asynccontextmanager
async def watching(api: FakeApiServer, config: ApiSettings) -> AsyncIterator[tuple[Watcher, list[str]]]:
    changes: list[str] = []
    client = config.client()
    watcher = Watcher(client, SLICES, lambda r: changes.append(r.plural), config)
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher, changes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


def names(watcher: Watcher) -> list[str]:
    return [o["metadata"]["name"] for o in watcher.objects()]


def a_slice(name: str, address: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "elections", "labels": {"kubernetes.io/service-name": "stats"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def test_list_then_watch_added_modified_deleted_with_the_bearer_token(tmp_path: Path) -> None:
    async def body() -> None:
        async with fake_apiserver(tmp_path) as api:
            api.load(PATH, FIXTURES / "endpointslices.json")
            async with watching(api, settings(api)) as (watcher, changes):
                assert await wait_until(lambda: api.watching(PATH) == 1, 5)
                assert watcher.synced.is_set() and watcher.lists == 1
                assert len(names(watcher)) == 6  # listed in 3 pages of 2
                assert changes == ["endpointslices"]
                first = watcher.objects()[0]
                assert (first["apiVersion"], first["kind"]) == ("discovery.k8s.io/v1", "EndpointSlice")

                api.emit(PATH, "ADDED", a_slice("stats-new", "127.0.0.51"))
                assert await wait_until(lambda: "stats-new" in names(watcher), 5)
                api.emit(PATH, "MODIFIED", a_slice("stats-new", "127.0.0.52"))
                assert await wait_until(
                    lambda: watcher.store[("elections", "stats-new")]["endpoints"][0]["addresses"] == ["127.0.0.52"], 5
                )
                api.emit(PATH, "DELETED", a_slice("stats-new", "127.0.0.52"))
                assert await wait_until(lambda: "stats-new" not in names(watcher), 5)
                api.bookmark(PATH)
                assert await wait_until(lambda: watcher.resource_version == str(api.rv), 5)
                assert changes == ["endpointslices"] * 4  # a bookmark is not a change

            seen = [r for r in api.requests if r.path == PATH]
            assert {r.authorization for r in seen} == {f"Bearer {TOKEN}"}
            watch = next(r for r in seen if r.params.get("watch") == "1")
            assert watch.params["allowWatchBookmarks"] == "true"
            assert watch.params["resourceVersion"]  # from the list

    run(body())


def test_410_gone_makes_a_new_list_whether_status_or_error_event(tmp_path: Path) -> None:
    async def body() -> None:
        async with fake_apiserver(tmp_path) as api:
            api.load(PATH, FIXTURES / "endpointslices.json")
            async with watching(api, settings(api)) as (watcher, _):
                assert await wait_until(lambda: api.watching(PATH) == 1, 5)
                lists = api.lists(PATH)
                for as_event in (False, True):
                    # a change the watch never sees as an event: only a new list can show it
                    missed = f"stats-missed-{as_event}".lower()
                    api.put(PATH, a_slice(missed, "127.0.0.61"))
                    api.compact(PATH, as_event=as_event)
                    assert await wait_until(lambda name=missed: name in names(watcher), 5)
                    assert await wait_until(lambda: api.watching(PATH) == 1, 5)
                assert watcher.lists == 3
                assert api.lists(PATH) == lists + 2 * 4  # 4 pages each time
                assert api.gone == 2  # each time the watch resumed from the old resourceVersion first
                # and the watch works again from the new list's resourceVersion
                api.emit(PATH, "ADDED", a_slice("after-gone", "127.0.0.62"))
                assert await wait_until(lambda: "after-gone" in names(watcher), 5)

    run(body())


def test_the_token_file_is_read_for_every_request_and_failures_are_retried(tmp_path: Path) -> None:
    async def body() -> None:
        token_file = tmp_path / "token"
        token_file.write_text("expired-token\n")
        async with fake_apiserver(tmp_path) as api:
            api.load(PATH, FIXTURES / "endpointslices.json")
            async with watching(api, settings(api, token=None, token_file=token_file)) as (watcher, _):
                assert await wait_until(lambda: len(api.requests) >= 2, 5)  # 401, retried
                assert not watcher.synced.is_set()
                token_file.write_text(TOKEN + "\n")  # the kubelet rotated it
                assert await wait_until(watcher.synced.is_set, 5)
                assert len(watcher.store) == 6
            assert {r.authorization for r in api.requests} == {"Bearer expired-token", f"Bearer {TOKEN}"}

    run(body())


def test_the_server_certificate_is_checked_against_the_given_ca(tmp_path: Path) -> None:
    async def body() -> None:
        other_ca = tmp_path / "other-ca.crt"
        async with fake_apiserver(tmp_path) as api:
            assert api.ca_file is not None
            other_ca.write_text(api.ca_file.read_text())
            async with fake_apiserver(tmp_path / "second") as other:  # another CA
                async with watching(other, settings(other, ca_file=api.ca_file)) as (watcher, _):
                    await asyncio.sleep(0.5)
                    assert not watcher.synced.is_set() and other.requests == []

    (tmp_path / "second").mkdir()
    run(body())


def test_in_cluster_settings_come_from_the_service_account_mount(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = ApiSettings.in_cluster(env, root=tmp_path)
    assert config.server == "https://10.96.0.1:443"
    assert (config.token_file, config.ca_file) == (tmp_path / "token", tmp_path / "ca.crt")
    assert (
        ApiSettings.in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1"}, root=tmp_path).server == "https://[fd00::1]:443"
    )


def test_resource_paths() -> None:
    assert ResourceType("v1", "Pod", "pods").path == "/api/v1/pods"
    assert SLICES.path == "/apis/discovery.k8s.io/v1/endpointslices"
    tp = ResourceType("mesh.codifyhq.io/v1", "TrafficPolicy", "trafficpolicies", namespace="elections")
    assert tp.path == "/apis/mesh.codifyhq.io/v1/namespaces/elections/trafficpolicies"


def test_a_kubeconfig_gives_server_ca_and_user_inline_or_as_files(tmp_path: Path) -> None:
    """`interstate controller --kubeconfig`: the current (or named) context's server, CA and
    user; `*-data` fields become 0600 files; a missing entry is named."""
    import base64
    import stat

    import yaml

    config = {
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": "https://127.0.0.1:6443/",
                    "certificate-authority-data": base64.b64encode(b"CA").decode(),
                },
            }
        ],
        "users": [
            {
                "name": "cert",
                "user": {"client-certificate-data": base64.b64encode(b"CERT").decode(), "client-key": "key.pem"},
            },
            {"name": "token", "user": {"tokenFile": "token"}},
        ],
        "contexts": [
            {"name": "a", "context": {"cluster": "c", "user": "cert"}},
            {"name": "b", "context": {"cluster": "c", "user": "token"}},
        ],
        "current-context": "a",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    settings = ApiSettings.from_kubeconfig(path, tmp_path / "files")
    assert settings.server == "https://127.0.0.1:6443"
    assert settings.ca_file is not None and settings.ca_file.read_bytes() == b"CA"
    assert settings.client_cert is not None and settings.client_cert.read_bytes() == b"CERT"
    assert stat.S_IMODE(settings.client_cert.stat().st_mode) == 0o600
    assert settings.client_key == tmp_path / "key.pem"  # relative to the kubeconfig
    by_token = ApiSettings.from_kubeconfig(path, tmp_path / "files", context="b")
    assert by_token.token_file == tmp_path / "token" and by_token.client_cert is None
    with pytest.raises(ValueError, match="contexts: no entry named 'z'"):
        ApiSettings.from_kubeconfig(path, tmp_path / "files", context="z")
