"""Numbers, durations and JWKS past what the model accepts: each is an issue naming its field and
the bound, never an exception of a validator (the loader's "this is a bug in interstate").

A JWKS file may be any path the mesh names, so a device, a FIFO or a huge file is refused without
reading it whole (or at all), and no message quotes what the file holds.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from interstate.autoscale import algorithm
from interstate.config.loader import decode_sources
from interstate.errors import ConfigError, Issue
from interstate.model import HorizontalPodAutoscaler, TokenPolicy
from interstate.model import token_policy as tp
from interstate.model.autoscaler import RequestRate
from interstate.model.base import Duration

BREAKER = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: stats}
spec: {port: 8080, run: {command: [python, stats.py]}}
---
apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata: {name: stats-breaker}
spec:
  destination: {service: stats}
  outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 30s}
"""
HPA = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: results}
spec: {port: 8080, run: {command: [python, results.py]}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: results-hpa}
spec:
  scaleTargetRef: {kind: Workload, name: results}
  maxReplicas: 5
  metrics:
    - type: Pods
      pods: {metric: {name: requests_per_second}, target: {type: AverageValue, averageValue: "100"}}
"""
KEY = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}
JWKS = json.dumps({"keys": [KEY]})
SECRET = "hunter2-do-not-echo"


def token_policy(jwks: str) -> str:
    return f"""\
apiVersion: mesh.codifyhq.io/v1
kind: TokenPolicy
metadata: {{name: api-tokens}}
spec:
  issuers: [{{issuer: https://id.example, audiences: [results], jwks: {jwks}}}]
  require: [{{pathPrefix: /results}}]
"""


def inline(text: str) -> str:
    return token_policy("{inline: " + json.dumps(text) + "}")


def from_file(name: str | Path) -> str:
    return token_policy("{file: " + json.dumps(str(name)) + "}")


def only_issue(text: str, file: str = "mesh.yaml", **options: Any) -> Issue:
    with pytest.raises(ConfigError) as caught:
        decode_sources({file: text}, **options)
    (issue,) = caught.value.issues
    assert "bug in interstate" not in issue.message, str(issue)
    return issue


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "9" * 400 + "s",  # float('9' * 400) is inf: timedelta(seconds=inf) was an OverflowError
        "1" + "0" * 300 + "us",  # finite, but past what timedelta holds (999,999,999 days)
        "1" + "0" * 20 + "h",
        "1h" * 30,
        "86400.000001s",
    ],
)
def test_a_duration_past_a_day_names_its_field_and_the_bound(written: str) -> None:
    issue = only_issue(BREAKER.replace("30s", written))

    assert issue.field == "spec.outlierDetection.baseEjectionTime"
    assert issue.message.endswith(" is too long; at most 24h")
    assert len(issue.message) < 100  # the value is quoted short


def test_a_day_is_the_longest_duration() -> None:
    adapter = TypeAdapter(Duration)
    assert adapter.validate_python("24h") == adapter.validate_python("86400s") == timedelta(days=1)
    with pytest.raises(ValidationError, match="is too long; at most 24h"):
        adapter.validate_python(timedelta(days=2))  # a timedelta from Python is held to it too


# --- quantities ----------------------------------------------------------------------------------


def test_a_target_finer_than_a_nano_is_refused_as_kubernetes_would_round_it() -> None:
    # 0.1n is positive, but the autoscaler counts targets in milli-units: 0 of them, and divided by it.
    issue = only_issue(HPA.replace('averageValue: "100"', 'averageValue: "0.1n"'))

    assert issue.field == "spec.metrics[0].pods.target.averageValue"
    assert issue.message == "'0.1n' is less than 1n, the smallest quantity; e.g. 100 or 500m"


def test_a_target_of_one_nano_is_a_target_the_autoscaler_can_divide_by() -> None:
    config = decode_sources({"mesh.yaml": HPA.replace('averageValue: "100"', 'averageValue: "1n"')})
    (hpa,) = config.of_kind(HorizontalPodAutoscaler)
    (goal,) = hpa.metrics
    assert isinstance(goal, RequestRate)
    sample = algorithm.MetricSample(goal.metric, "AverageValue", goal.per_replica, {"results-0": 5.0})

    decision, _ = algorithm.decide(
        "results", algorithm.Spec(max_replicas=5), 1, ["results-0"], [sample], 0.0, algorithm.State()
    )

    assert decision.desired == 5


# --- an inline JWKS ------------------------------------------------------------------------------


def test_a_deeply_nested_inline_jwks_is_refused_before_it_is_parsed() -> None:
    issue = only_issue(inline("[" * 10_000))  # json.loads: RecursionError

    assert issue.field == "spec.issuers[0].jwks.inline"
    assert issue.message == "not a valid JWKS: nested more than 8 levels deep"


def test_eight_levels_are_enough_and_brackets_in_strings_do_not_count() -> None:
    key = {**KEY, "kid": '[[[[[[[[[[{{{{{{{{{{\\"[[[[', "ext": [[[[[]]]]]}  # object, list, object + 5
    text = json.dumps({"keys": [key]})
    (policy,) = decode_sources({"mesh.yaml": inline(text)}).of_kind(TokenPolicy)

    assert policy.spec.issuers[0].jwks.text == text
    assert only_issue(inline(text.replace("[[[[[]]]]]", "[[[[[[]]]]]]"))).message == (
        "not a valid JWKS: nested more than 8 levels deep"
    )


def test_an_inline_jwks_over_64_kib_is_refused() -> None:
    text = json.dumps({"keys": [{**KEY, "kid": "k" * 70_000}]})
    issue = only_issue(inline(text))

    assert issue.field == "spec.issuers[0].jwks.inline"
    assert issue.message.startswith(f"{len(text):,} bytes is over the limit of 64 KiB for a JWKS")


def test_a_jwks_that_is_not_utf8_is_refused() -> None:
    # The YAML reader refuses "\ud800" escapes, the loader texts that are not UTF-8; a model
    # built from Python may still carry a lone surrogate, which Envoy's config cannot.
    with pytest.raises(ValidationError, match=r"inline: not a valid JWKS: not UTF-8 text \(character 10\)"):
        tp.Jwks.model_validate({"inline": '{"keys": [\ud800]}'})


def test_a_jwks_with_a_private_key_is_refused() -> None:
    issue = only_issue(inline(json.dumps({"keys": [{**KEY, "d": SECRET}]})))

    assert issue.field == "spec.issuers[0].jwks.inline"
    assert issue.message.startswith("keys[0]: a private key (it has 'd'); give the public keys only")
    assert SECRET not in issue.message


@pytest.mark.parametrize(
    "text",
    [SECRET, f'{{"keys": "{SECRET}"}}', f'{{"keys": [{{"kty": "{SECRET}"}}]}}', f'{{"{SECRET}": 1,}}', "1" * 5000],
)
def test_a_jwks_that_is_not_one_is_reported_without_quoting_it(text: str) -> None:
    issue = only_issue(inline(text))

    assert issue.field == "spec.issuers[0].jwks.inline"
    assert SECRET not in issue.message and "1111" not in issue.message


# --- a JWKS file ---------------------------------------------------------------------------------


def test_a_jwks_file_is_read_relative_to_the_mesh_file_even_outside_its_folder(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "mesh").mkdir()
    (tmp_path / "keys" / "jwks.json").write_bytes(b"\xef\xbb\xbf" + JWKS.encode())  # a byte order mark
    config = decode_sources({str(tmp_path / "mesh" / "tokens.yaml"): from_file("../keys/jwks.json")})

    assert config.of_kind(TokenPolicy)[0].spec.issuers[0].jwks.text == JWKS


def test_a_device_is_refused_unread() -> None:
    # /dev/null, not /dev/zero: where the check is missing this says so without filling memory.
    issue = only_issue(from_file("/dev/null"))

    assert (issue.field, issue.message) == (
        "spec.issuers[0].jwks.file",
        "/dev/null: is a device, not a file; give a JWKS file",
    )


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "jwks.json")
    issue = only_issue(from_file("jwks.json"), str(tmp_path / "tokens.yaml"))

    assert issue.field == "spec.issuers[0].jwks.file"
    assert issue.message == f"{tmp_path / 'jwks.json'}: is a FIFO, not a file; give a JWKS file"


@pytest.mark.timeout(20)
def test_a_fifo_swapped_in_after_the_check_is_refused_once_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo, regular = tmp_path / "jwks.json", tmp_path / "regular.json"
    os.mkfifo(fifo)
    regular.write_text(JWKS)
    real_stat = os.stat
    monkeypatch.setattr(tp.os, "stat", lambda path, *a, **k: real_stat(regular if path == fifo else path, *a, **k))

    with pytest.raises(ValueError, match=r"^is a FIFO, not a file; give a JWKS file$"):
        tp.read_jwks_file(fifo)  # O_NONBLOCK: the open does not wait for a writer


def test_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    issue = only_issue(from_file("keys"), str(tmp_path / "tokens.yaml"))

    assert issue.message == f"{tmp_path / 'keys'}: is a folder, not a file; give a JWKS file"


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    issue = only_issue(from_file("jwks.json"), str(tmp_path / "tokens.yaml"))

    assert issue.message == f"{tmp_path / 'jwks.json'}: cannot be read: No such file or directory"


def test_a_large_file_is_refused_by_its_size_unread(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_bytes(b" " * 100_000)
    issue = only_issue(from_file("jwks.json"), str(tmp_path / "tokens.yaml"))

    assert issue.message == (
        f"{tmp_path / 'jwks.json'}: 100,000 bytes is over the limit of 64 KiB for a JWKS (public keys take a few KiB)"
    )


def test_a_file_larger_than_its_size_says_is_read_no_further_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a /proc file (size 0) or a file growing while it is read.
    big = tmp_path / "jwks.json"
    big.write_bytes(b" " * 10_000_000)
    real_stat = os.stat
    small = os.stat_result((*real_stat(big)[:6], 0, *real_stat(big)[7:]))  # st_size 0
    monkeypatch.setattr(tp.os, "stat", lambda path, *a, **k: small if path == big else real_stat(path, *a, **k))
    asked: list[int] = []
    real_read = os.read

    def read(fd: int, count: int) -> bytes:
        asked.append(count)
        return real_read(fd, count)

    monkeypatch.setattr(tp.os, "read", read)

    with pytest.raises(ValueError, match=r"^more than 65,536 bytes is over the limit of 64 KiB for a JWKS"):
        tp.read_jwks_file(big)
    assert sum(asked) <= 65_537  # of 10 MB


def test_a_file_that_is_not_a_jwks_is_never_quoted(tmp_path: Path) -> None:
    cases = {
        "env": f"PASSWORD={SECRET}\n".encode(),
        "json": json.dumps({"keys": SECRET}).encode(),
        "binary": b"\xff\xfe" + SECRET.encode(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        issue = only_issue(from_file(name), str(tmp_path / "tokens.yaml"))
        assert issue.field == "spec.issuers[0].jwks.file"
        assert SECRET not in issue.message, issue.message
    assert only_issue(from_file("env"), str(tmp_path / "tokens.yaml")).message == (
        f"{tmp_path / 'env'}: not a valid JWKS: not JSON (Expecting value at line 1, column 1)"
    )
    assert only_issue(from_file("binary"), str(tmp_path / "tokens.yaml")).message == (
        f"{tmp_path / 'binary'}: not a valid JWKS: not UTF-8 text (byte 0)"
    )


def test_a_kubernetes_resource_may_not_name_a_file(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text(JWKS)  # there, and still not read
    issue = only_issue(from_file(tmp_path / "jwks.json"), "default/api-tokens", kubernetes=True)

    assert issue.field == "spec.issuers[0].jwks.file"
    assert issue.message.startswith("not read for a Kubernetes resource")
    assert issue.message.endswith("; put the JWKS in jwks.inline")
