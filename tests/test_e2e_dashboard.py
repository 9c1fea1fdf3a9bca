"""End-to-end: the live dashboard of a running election-night mesh, in its JSON and in a real browser.

A copy of the example runs under `interstate up`; a paced client sends requests through the
ingress (slow enough that the autoscaler keeps results at 2, so the replica counts stand still)
while the test reads `/dashboard/data` and then lets a headless Chromium (Debian's `chromium`
and `chromium-driver`, installed by `make test-tools`, part of `make test`) run the page and checks what its script drew.
A screenshot is left in the test's tmp folder.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from mesh_runner import EXAMPLE, MeshRun, running_mesh, wait_for
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RATE = 40  # requests/s through the ingress: well under the autoscaler's 100 per replica
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1440,1000",
)


class PacedTraffic:
    """GET `url` about `rate` times a second from one thread until stopped; counts the answers."""

    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.every = 1.0 / rate
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PacedTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        next_at = time.monotonic()
        with httpx.Client(timeout=5, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.url)
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                next_at += self.every
                self._stop.wait(max(0.0, next_at - time.monotonic()))


def chromium_paths() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "the dashboard test needs Debian's chromium and chromium-driver (missing: "
            + ", ".join(name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None)
            + "); `make test-tools` installs them (apt-get install chromium chromium-driver)"
        )
    return chromium, driver


def browser(chromium: str, driver: str, profile: Path) -> WebDriver:
    options = Options()
    options.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def test_the_dashboard_shows_the_live_mesh(tmp_path: Path) -> None:
    chromium, chromedriver = chromium_paths()  # fail (not skip) before starting anything
    folder = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, folder)
    with running_mesh(folder, tmp_path / "run") as mesh:
        watch(mesh, chromium, chromedriver, tmp_path)


def watch(mesh: MeshRun, chromium: str, chromedriver: str, tmp_path: Path) -> None:
    with PacedTraffic(mesh.ingress + "/results", RATE) as traffic:
        # (a) the JSON: rates measured from the side-cars' stats, replica counts as /status says
        def measured() -> dict[str, Any] | None:
            data = dict(mesh.api("GET", "/dashboard/data").json())
            rps = {s["name"]: (s["traffic"] or {}).get("rps") for s in data["services"]}
            return data if (rps.get("results") or 0) > 0 and (rps.get("stats") or 0) > 0 else None

        data = wait_for(measured, timeout=15, what="nonzero requests/s on /dashboard/data", every=0.3)
        status = mesh.status()
        services = {s["name"]: s for s in data["services"]}
        assert set(services) == set(status["services"])
        for name, facts in status["services"].items():
            assert (services[name]["ready"], services[name]["desired"]) == (facts["ready"], facts["desired"]), name
        results = services["results"]
        assert 0.3 * RATE < results["traffic"]["rps"] < 3 * RATE, results["traffic"]
        assert results["traffic"]["error_rate"] == 0.0
        assert results["traffic"]["history"]
        assert results["autoscaler"]["name"] == "results-hpa"
        assert services["stats"]["circuit"]["state"] == "closed"
        assert data["mesh"]["ingress"]["rps"] > 0
        assert data["mesh"]["policy_coverage"]["share"] == 1.0
        assert data["mesh"]["xds"]["synced"] == data["mesh"]["xds"]["proxies"] == 4
        assert {p["state"] for p in data["xds"]} == {"synced"}
        assert data["certs"]["next_rotation_s"] > 0

        # (b) the page, run by a real browser
        driver = browser(chromium, chromedriver, tmp_path / "chromium-profile")
        try:
            # a browser without a session gets the sign-in page; the ready line's link signs it in
            # (a read-only session cookie) and takes it to the dashboard
            driver.get(mesh.admin + "/dashboard")
            assert "sign-in link" in driver.page_source
            driver.get(mesh.dashboard_link)
            assert driver.current_url == mesh.admin + "/dashboard"
            cookie = driver.get_cookie("interstate_session")
            assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            reused = httpx.get(mesh.dashboard_link, timeout=5, trust_env=False, follow_redirects=False)
            assert reused.status_code == 401  # the link works once

            def rps_shown(d: WebDriver) -> float:
                cells = d.find_elements(By.CSS_SELECTOR, 'tr[data-service="results"] td.rps')
                try:
                    return float(cells[0].text) if cells else 0.0
                except ValueError:  # "—" until the second sample
                    return 0.0

            WebDriverWait(driver, 15, poll_frequency=0.2).until(lambda d: rps_shown(d) > 0)
            WebDriverWait(driver, 5, poll_frequency=0.2).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-service="results"] svg.spark polyline')
            )
            time.sleep(2.5)  # a few more points on the sparklines for the screenshot
            status = mesh.status()
            for name, facts in status["services"].items():
                row = driver.find_element(By.CSS_SELECTOR, f'tr[data-service="{name}"]')
                assert name in row.find_element(By.CSS_SELECTOR, "td.name").text
                shown = row.find_element(By.CSS_SELECTOR, ".replicas").text
                assert shown == f"{facts['ready']}/{facts['desired']}", (name, shown)
            assert rps_shown(driver) > 0
            line = driver.find_element(By.CSS_SELECTOR, 'tr[data-service="results"] svg.spark polyline')
            assert len(line.get_attribute("points").split()) >= 2  # several samples drawn
            assert driver.find_element(By.ID, "conn").text.startswith("updated")
            assert driver.find_element(By.CSS_SELECTOR, "#t-xds .big").text.replace(" ", "") == "4/4synced"
            signing_in = f"{mesh.admin}/dashboard - Failed to load resource: the server responded with a status of 401"
            errors = [
                e
                for e in driver.get_log("browser")
                if e.get("level") == "SEVERE" and not str(e.get("message")).startswith(signing_in)
            ]
            assert not errors, errors
            assert driver.save_screenshot(str(tmp_path / "dashboard.png"))
        finally:
            driver.quit()
        wait_for(lambda: traffic.ok >= 300, timeout=15, what="300 requests through the ingress", every=0.1)
    assert not traffic.failures, traffic.failures[:5]
