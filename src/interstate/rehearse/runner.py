"""Run a rehearsal against a running mesh: one hey process per phase, the hiccup's fault on for
its phase only (and always turned off again), GET /status about once a second for the replica
timeline and a progress line, and the policy-coverage and ingress counters before and after.

Everything the report says comes from here: hey's rows, the status polls, the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from interstate.client import AdminClient
from interstate.errors import InterstateError, PermanentError, TemporaryError
from interstate.rehearse.load import Request, hey_command, parse_hey_csv, run_hey
from interstate.rehearse.report import Coverage, PhaseWindow, Rehearsal, Sample
from interstate.rehearse.scenario import Phase, Scenario

HEY_GRACE_S = 30.0  # hey waits for in-flight requests after -z (its timeout is 20 s)


def sample_from_status(t: float, status: dict[str, Any]) -> Sample:
    """What one GET /status says about each service: ready replicas, its callers' cumulative
    counters, the fault in force."""
    ready: dict[str, int] = {}
    counters: dict[str, dict[str, int]] = {}
    faults: dict[str, str | None] = {}
    for name, svc in status.get("services", {}).items():
        ready[name] = int(svc.get("ready", 0))
        resilience = svc.get("resilience")
        if isinstance(resilience, dict):
            counters[name] = {k: int(v) for k, v in resilience.get("counters", {}).items() if isinstance(v, int)}
            faults[name] = resilience.get("fault")
    return Sample(t, ready, counters, faults)


def coverage_of(status: dict[str, Any]) -> Coverage | None:
    """status["boundary"]["policy_coverage"], or None when the mesh does not report it."""
    coverage = status.get("boundary", {}).get("policy_coverage")
    if not isinstance(coverage, dict):
        return None
    return {
        str(service): {"requests": int(c.get("requests", 0)), "with_policy": int(c.get("with_policy", 0))}
        for service, c in coverage.items()
        if isinstance(c, dict)
    }


def progress_line(phase: Phase, elapsed: float, sent: int | None, ok: float | None, ready: dict[str, int]) -> str:
    """`surge      7/20s  sent 1,400  ok 99.9%  results: 4 replicas  stats: 1 replica`"""
    parts = [f"{phase.name:<9} {min(elapsed, phase.seconds):>3.0f}/{phase.seconds:g}s"]
    parts.append("sent n/a" if sent is None else f"sent {sent:,}")
    parts.append("ok  -  " if ok is None else f"ok {100 * ok:.1f}%")
    if ready:
        parts += [f"{name}: {n} replica{'' if n == 1 else 's'}" for name, n in sorted(ready.items())]
    else:
        parts.append("status n/a")
    return "  ".join(parts)


@dataclass
class _Current:
    phase: Phase
    started: float
    ingress: dict[str, int] | None


class RehearsalRunner:
    def __init__(
        self,
        admin: str,
        token: str,
        scenario: Scenario,
        hey: str,
        say: Callable[[str], None],
        poll_every: float = 1.0,
    ) -> None:
        self.admin = admin.rstrip("/")
        self.token = token
        self.scenario = scenario
        self.hey = hey
        self.say = say
        self.poll_every = poll_every
        self._t0 = time.monotonic()
        self._http = httpx.AsyncClient(timeout=10.0, trust_env=False, headers={"authorization": f"Bearer {token}"})
        self._samples: list[Sample] = []
        self._current: _Current | None = None

    def clock(self) -> float:
        return time.monotonic() - self._t0

    # ---- reading the mesh -----------------------------------------------------------------
    async def _status(self) -> dict[str, Any]:
        try:
            response = await self._http.get(f"{self.admin}/status")
            response.raise_for_status()
            return dict(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise TemporaryError(f"cannot read {self.admin}/status ({exc}); is `interstate up` running?") from None

    async def _sample(self) -> Sample | None:
        try:
            sample = sample_from_status(self.clock(), await self._status())
        except InterstateError:
            return None
        self._samples.append(sample)
        return sample

    async def _ingress(self) -> dict[str, int] | None:
        """The ingress Envoy's request counters {total, completed, 2xx}, as the admin API reads
        them from its admin socket; None when it cannot say."""
        try:
            response = await self._http.get(f"{self.admin}/ingress/requests")
            response.raise_for_status()
            return {str(k): int(v) for k, v in response.json().items()}
        except (httpx.HTTPError, ValueError, TypeError, AttributeError):
            return None

    async def _coverage(self, min_wait: float, max_wait: float = 5.0) -> Coverage | None:
        """Policy coverage once it has stopped moving (side-cars flush access logs about once a
        second); None when the mesh does not report it."""
        started = time.monotonic()
        last: Coverage | None = None
        while True:
            try:
                coverage = coverage_of(await self._status())
            except InterstateError:
                return None
            if coverage is None:
                return None
            waited = time.monotonic() - started
            if (waited >= min_wait and coverage == last) or waited >= max_wait:
                return coverage
            last = coverage
            await asyncio.sleep(0.4)

    # ---- the hiccup -------------------------------------------------------------------------
    def _set_fault(self, on: bool) -> None:
        fault = self.scenario.fault
        try:
            AdminClient(self.admin, self.token, timeout=30).fault(fault.service, fault.body() if on else None)
        except InterstateError as exc:
            if on:
                raise
            raise TemporaryError(
                f"could not end the fault on {fault.service} ({exc}); end it with `interstate fault {fault.service} --off`"
            ) from exc

    # ---- progress -------------------------------------------------------------------------
    async def _poll(self) -> None:
        tick = time.monotonic()
        while True:
            tick = max(tick + self.poll_every, time.monotonic())  # a slow poll delays, never bunches up
            await asyncio.sleep(tick - time.monotonic())
            current = self._current
            sample, ingress = await asyncio.gather(self._sample(), self._ingress())
            if current is None or self._current is not current:
                continue
            sent = ok = None
            if ingress is not None and current.ingress is not None:
                sent = ingress.get("total", 0) - current.ingress.get("total", 0)
                done = ingress.get("completed", 0) - current.ingress.get("completed", 0)
                ok = (ingress.get("2xx", 0) - current.ingress.get("2xx", 0)) / done if done > 0 else None
            self.say(
                progress_line(current.phase, self.clock() - current.started, sent, ok, sample.ready if sample else {})
            )

    # ---- the run --------------------------------------------------------------------------
    async def run(self) -> Rehearsal:
        """The whole rehearsal. SIGTERM (like Ctrl-C under asyncio.run) cancels it; hey is then
        killed and the fault turned off before the cancellation goes on."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        previous = signal.getsignal(signal.SIGTERM)
        handled = False
        if task is not None:
            try:
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
                handled = True
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
                pass
        try:
            return await self._run()
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGTERM)
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
            await self._http.aclose()

    async def _run(self) -> Rehearsal:
        scenario = self.scenario
        status = await self._status()
        ingress = status.get("ingress")
        if not isinstance(ingress, dict) or "url" not in ingress:
            raise PermanentError("the mesh has no ingress (no Gateway); a rehearsal sends its traffic there")
        service = scenario.fault.service
        if service not in status.get("services", {}):
            raise PermanentError(f"the mesh has no service {service!r} to fail; choose one with --fault-service")
        existing = (status["services"][service].get("resilience") or {}).get("fault")
        if existing:
            raise PermanentError(
                f"{service} already has a fault ({existing}); end it first: `interstate fault {service} --off`"
            )
        target = str(ingress["url"]).rstrip("/") + scenario.path
        started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        coverage_before = await self._coverage(min_wait=0.0)
        ingress_before = await self._ingress()
        windows: list[PhaseWindow] = []
        requests: list[Request] = []
        poller = asyncio.create_task(self._poll())
        try:
            for phase in scenario.phases():
                window, rows = await self._phase(phase, target)
                windows.append(window)
                requests += rows
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        coverage_after = await self._coverage(min_wait=1.2)
        ingress_after = await self._ingress()
        final = await self._sample()
        return Rehearsal(
            started_at=started_at,
            target=target,
            plan=scenario.describe(),
            headers=scenario.headers,
            fault_service=service,
            phases=windows,
            requests=sorted(requests, key=lambda r: r.t),
            samples=list(self._samples),
            coverage_before=coverage_before,
            coverage_after=coverage_after,
            ingress_before=None if ingress_before is None else ingress_before.get("total"),
            ingress_after=None if ingress_after is None else ingress_after.get("total"),
            fault_after="unknown" if final is None else final.faults.get(service),
        )

    async def _phase(self, phase: Phase, target: str) -> tuple[PhaseWindow, list[Request]]:
        workers, qps = phase.workers(self.scenario.max_worker_qps)
        command = hey_command(self.hey, target, phase.seconds, workers, qps, self.scenario.headers)
        await self._sample()  # the replicas and counters as the phase begins
        fault_on = False
        try:
            if phase.fault:
                await asyncio.to_thread(self._set_fault, True)
                fault_on = True
                self.say(f"{phase.name}: fault on: {self.scenario.fault.describe()}")
            self._current = _Current(phase, self.clock(), await self._ingress())
            start = self.clock()
            text = await run_hey(command, phase.seconds + HEY_GRACE_S)
            end = self.clock()
        finally:
            self._current = None
            if fault_on:
                self._set_fault(False)  # blocking on purpose: it must happen even when cancelled
                self.say(f"{phase.name}: fault off")
        await self._sample()  # and as it ends
        return PhaseWindow(phase.name, start, end, phase.fault), parse_hey_csv(text, phase.name, start)
