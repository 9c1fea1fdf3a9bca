"""Hostile mesh files: each is refused by a limit of `config.limits`, quickly and in little memory.

Every refusal is a ConfigError whose issue names the file (and the document when there is one)
and the limit; the whole error text stays short. Memory is measured with tracemalloc; time is
bounded only by pytest-timeout (speed belongs in bench/).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from interstate.config import documents, limits
from interstate.config.loader import decode_sources, load, read_sources
from interstate.errors import ConfigError, Issue

pytestmark = pytest.mark.timeout(60)

MB = 1_000_000
SHORT = 10_000  # characters: the most a refusal of one hostile file may print

WORKLOAD = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: stats}
spec:
  port: 8080
  run: {command: [python, stats.py]}
"""


def alias_bomb(levels: int = 9) -> str:
    """The classic "billion laughs": each anchor is a list of nine aliases of the previous one."""
    lines = ["apiVersion: mesh.codifyhq.io/v1", "kind: Workload", "metadata: {name: lol}", "spec:"]
    lines.append('  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]')
    for i in range(1, levels):
        name, previous = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"  {name}: &{name} [{','.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


def refusal(sources: Mapping[str, str], peak_mb: float = 50) -> ConfigError:
    """The ConfigError `decode_sources` raises, checking that reading it stayed under `peak_mb`."""
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as caught:
            decode_sources(sources)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < peak_mb * MB, f"peak {peak / MB:.0f} MB"
    return caught.value


def only(error: ConfigError) -> Issue:
    assert len(error.issues) == 1, str(error)[:2000]
    assert len(str(error)) < SHORT
    return error.issues[0]


def test_an_alias_bomb_of_a_few_hundred_bytes_is_refused_while_it_is_read() -> None:
    bomb = alias_bomb(9)
    assert len(bomb) < 700

    issue = only(refusal({"bomb.yaml": bomb}, peak_mb=2))

    assert (issue.file, issue.document) == ("bomb.yaml", 1)
    assert "aliases (*name) repeat more than 10,000 values" in issue.message
    assert "see Limits in README.md" in issue.message
    assert "write the repeated blocks out" in issue.message


def test_a_depth_6_alias_bomb_is_refused_too() -> None:
    # 9**6 = 531,441 values: what produced a 147 MB response from POST /apply.
    issue = only(refusal({"bomb.yaml": alias_bomb(6)}, peak_mb=2))
    assert "aliases (*name) repeat more than 10,000 values" in issue.message


def test_aliases_for_shared_blocks_are_welcome() -> None:
    text = WORKLOAD.replace(
        "spec:\n", "spec:\n  env: &env {REGION: us-east, TIER: results}\n", 1
    )  # anchors may sit on any value
    shared = textwrap.dedent("""\
        apiVersion: mesh.codifyhq.io/v1
        kind: TrafficPolicy
        metadata: {name: stats-breaker}
        spec:
          destination: {service: stats}
          outlierDetection: &breaker {consecutiveErrors: 3, baseEjectionTime: 30s}
        """)
    with pytest.raises(ConfigError) as caught:  # `env` is not a field of spec: the alias itself is fine
        decode_sources({"mesh.yaml": text + "---\n" + shared})
    assert [i.field for i in caught.value.issues] == ["spec.env"]

    config = decode_sources({"mesh.yaml": WORKLOAD + "---\n" + shared})
    assert len(config.resources) == 2
    repeated = "mesh:\n  a: &a {x: [1, 2, 3]}\n  b: [" + ", ".join(["*a"] * 100) + "]\n"
    with pytest.raises(ConfigError) as caught:  # 600 repeated values: under the budget, so a plain issue
        decode_sources({"mesh.yaml": repeated})
    assert "aliases" not in str(caught.value)


def test_an_alias_inside_the_value_it_names_is_refused() -> None:
    issue = only(refusal({"cycle.yaml": WORKLOAD.replace("metadata:", "loop: &x [1, *x]\nmetadata:")}))
    assert (issue.file, issue.document) == ("cycle.yaml", 1)
    assert "alias *x is inside the value it names" in issue.message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 10_000 + "]" * 10_000, id="flow"),
        pytest.param("".join("  " * i + "a:\n" for i in range(2_000)), id="block"),
        pytest.param("spec: " + "{a: " * 900 + "1" + "}" * 900, id="under-libyaml-cap"),
    ],
)
def test_a_deep_nesting_bomb_is_refused(text: str) -> None:
    issue = only(refusal({"deep.yaml": text}, peak_mb=10))
    assert issue.file == "deep.yaml"
    assert "nested more than 32 levels deep" in issue.message
    assert "see Limits in README.md" in issue.message


def test_nesting_up_to_the_limit_is_read() -> None:
    nested = "{a: " * (limits.MAX_DEPTH - 1) + "1" + "}" * (limits.MAX_DEPTH - 1)
    assert documents.read("ok.yaml", f"x: {nested}".encode(), documents.Budget()) != []


def test_ten_thousand_documents_in_one_file_are_refused() -> None:
    issue = only(refusal({"many.yaml": "---\n{}\n" * 10_000}, peak_mb=10))
    assert (issue.file, issue.document) == ("many.yaml", 1_001)
    assert "more than 1,000 documents in one file" in issue.message
    assert "split the file" in issue.message


def test_documents_are_counted_across_the_files_of_a_mesh() -> None:
    files = {f"part-{i:02}.yaml": "---\n" * 1_000 for i in range(11)}
    issue = only(refusal(files, peak_mb=10))
    assert (issue.file, issue.document) == ("part-10.yaml", 1)
    assert "more than 10,000 documents in the mesh" in issue.message


def test_a_50_mb_text_is_refused_before_it_is_parsed() -> None:
    issue = only(refusal({"big.yaml": "a: b\n" * 10_485_760}, peak_mb=1))
    assert (issue.file, issue.document) == ("big.yaml", 0)
    assert issue.message.startswith("at least 52,428,800 bytes is over the limit of 4 MiB for one mesh file")
    assert "split it into several files" in issue.message


def test_a_50_mb_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    big = tmp_path / "mesh.yaml"
    with big.open("w") as out:
        for _ in range(50):
            out.write("a: b\n" * 200_000 + "\n" * 48_576)
    assert big.stat().st_size == 50 * 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as caught:
            load(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * MB  # what is read is one byte over the 4 MiB limit, and nothing after it
    issue = only(caught.value)
    assert str(issue) == (
        f"{big}: 52,428,800 bytes is over the limit of 4 MiB for one mesh file "
        "(a fixed limit, see Limits in README.md); split it into several files"
    )


def test_multibyte_text_is_measured_in_utf8_bytes() -> None:
    text = "# " + "é" * (2 * 1024 * 1024) + "\n" + WORKLOAD  # 2 Mi characters, 4 MiB and a bit
    issue = only(refusal({"accents.yaml": text}, peak_mb=20))
    assert "bytes is over the limit of 4 MiB for one mesh file" in issue.message


def test_the_files_of_a_mesh_together_are_capped_before_any_is_parsed() -> None:
    files = {f"{i}.yaml": "# filler\n" * 350_000 for i in range(3)}  # 3.3 MB each, 10 MB in all
    error = refusal(files, peak_mb=20)
    issue = only(error)
    assert (issue.file, issue.document) == ("2.yaml", 0)
    assert "the mesh files add up to more than 8 MiB, the limit for one mesh" in issue.message


def test_a_folder_past_the_mesh_limit_is_refused(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.yaml").write_text("# filler\n" * 350_000)
    with pytest.raises(ConfigError) as caught:
        read_sources(tmp_path)
    issue = only(caught.value)
    assert (issue.file, issue.document) == (str(tmp_path / "2.yaml"), 0)
    assert "add up to more than 8 MiB" in issue.message


def test_too_many_files_are_refused() -> None:
    issue = only(refusal({f"{i}.yaml": "" for i in range(limits.MAX_FILES + 1)}))
    assert "10,001 files are over the limit of 10,000 for one mesh" in issue.message


@pytest.mark.parametrize("size", [3 * 1024 * 1024, 5 * 1024 * 1024], ids=["3MiB", "5MiB"])
def test_a_giant_single_line_scalar_is_refused(size: int) -> None:
    text = WORKLOAD.replace("name: stats", "name: " + "s" * size)
    issue = only(refusal({"giant.yaml": text}, peak_mb=3 * size / MB + 2))
    assert issue.file == "giant.yaml"
    if size > limits.MAX_FILE_BYTES:
        assert "over the limit of 4 MiB for one mesh file" in issue.message
    else:
        assert issue.document == 1
        assert f"at line 3: a value of {size:,} characters is over the limit of 131,072" in issue.message


def test_a_document_of_too_many_values_is_refused() -> None:
    text = WORKLOAD + "  calls: [" + ", ".join(["x"] * 30_000) + "]\n"
    issue = only(refusal({"wide.yaml": text}))
    assert (issue.file, issue.document) == ("wide.yaml", 1)
    assert "more than 20,000 values in one document" in issue.message


def test_values_are_counted_across_the_documents_of_a_mesh() -> None:
    document = "x: [" + ", ".join(["0"] * 19_000) + "]\n"
    files = {f"{i:02}.yaml": document for i in range(30)}  # 27 x 19,002 > 500,000
    with pytest.raises(ConfigError) as caught:  # not under tracemalloc, which makes it 5 times slower
        decode_sources(files)
    *each, last = caught.value.issues
    assert [i.field for i in each] == ["kind"] * 26  # a kind is missing in the files read before
    assert (last.file, last.document) == ("26.yaml", 1)
    assert "more than 500,000 values in the mesh" in last.message  # and no file after it is read


@pytest.mark.parametrize("loader", list(documents.LOADERS))
@pytest.mark.parametrize(
    ("text", "says"),
    [
        (alias_bomb(9), "aliases (*name) repeat more than 10,000 values"),
        ("a: " + "[" * 100 + "]" * 100, "nested more than 32 levels deep"),
        ("---\n" * 1_001, "more than 1,000 documents in one file"),
        ("x: " + "y" * 200_000, "a value of 200,000 characters is over the limit"),
        ("x: &x [1, *x]", "is inside the value it names"),
        ("x: [" + "1," * 20_001 + "]", "more than 20,000 values in one document"),
    ],
    ids=["aliases", "depth", "documents", "value", "cycle", "values"],
)
def test_libyaml_and_pure_python_parsers_keep_the_same_limits(loader: str, text: str, says: str) -> None:
    with pytest.raises(documents.Unreadable) as caught:
        documents.read("x.yaml", text.encode(), documents.Budget(), documents.LOADERS[loader])
    assert says in caught.value.issue.message


@pytest.mark.parametrize("loader", list(documents.LOADERS))
def test_both_parsers_read_a_mesh_alike(loader: str) -> None:
    text = (Path(__file__).parents[1] / "examples" / "election-night" / "results.yaml").read_bytes()
    read = documents.read("results.yaml", text, documents.Budget(), documents.LOADERS[loader])
    assert read == documents.read("results.yaml", text, documents.Budget(), documents.LOADERS["python"])
    assert read[0]["metadata"]["name"] == "results"


# Echoes: a value of the input is never quoted at length, whatever its size or shape.


def echoed(text: str, **extra: str) -> list[Issue]:
    error = refusal({"mesh.yaml": text, **extra})
    assert len(str(error)) < SHORT
    return error.issues


def test_a_huge_value_of_the_wrong_type_is_quoted_short() -> None:
    huge = "[" + ", ".join(f"[{i}, {{a: {i}}}]" for i in range(3_000)) + "]"
    (issue,) = echoed(WORKLOAD.replace("port: 8080", f"port: {huge}"))
    assert issue.field == "spec.port"
    got = issue.message.partition("(got ")[2]
    assert got.startswith("[[0, {'a': 0}]") and len(got) <= limits.MAX_ECHO_CHARS + 1


def test_a_huge_string_is_quoted_short_in_a_validator_message() -> None:
    (issue,) = echoed(WORKLOAD.replace("name: stats", "name: " + "Stats" * 20_000))
    assert issue.field == "metadata.name"
    assert issue.message.startswith("'StatsStats")
    assert issue.message.endswith("at most 63 characters (e.g. 'stats')")  # what would be valid survives
    assert len(issue.message) <= limits.MAX_MESSAGE_CHARS


def test_huge_keys_kinds_and_versions_are_quoted_short() -> None:
    key = "k" * 1_000  # YAML's longest implicit key is 1024 characters
    (issue,) = echoed(WORKLOAD.replace("spec:\n", f"spec:\n  {key}: 1\n"))
    assert issue.field.startswith("spec.kkkk") and len(issue.field) <= limits.MAX_ECHO_CHARS + 5
    assert issue.message.startswith("unknown field; valid fields here: ")

    (issue,) = echoed(WORKLOAD.replace("kind: Workload", "kind: " + "W" * 100_000))
    assert issue.field == "kind"
    assert len(issue.resource) <= 2 * limits.MAX_ECHO_CHARS + 1
    assert issue.message.startswith("unknown kind 'WWWW") and "known kinds: AccessPolicy" in issue.message

    (issue,) = echoed(WORKLOAD.replace("mesh.codifyhq.io/v1", "v" * 100_000))
    assert issue.field == "apiVersion"
    assert issue.message.endswith("is not valid for Workload; use mesh.codifyhq.io/v1")


def test_at_most_a_hundred_issues_are_reported() -> None:
    text = "---\n".join(f"kind: Nope\nmetadata: {{name: n{i}}}\n" for i in range(500))
    error = refusal({"mesh.yaml": text})
    assert len(error.issues) == limits.MAX_ISSUES + 1
    assert str(error.issues[0]) == (
        "mesh.yaml: stopped after 100 issues (a fixed limit, see Limits in README.md); "
        "fix these and validate again to see the rest"
    )


# Inputs that used to crash the loader with something other than a ConfigError.


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("when: 2001-13-45", "at line 1, column 7: !!timestamp '2001-13-45' cannot be read: month must be in 1..12"),
        ("mask: 0b_", "at line 1, column 7: !!int '0b_' cannot be read: invalid literal for int() with base 2"),
        ("n: !!int ''", "at line 1, column 4: !!int '' cannot be read: string index out of range"),
        ("t: !!timestamp x", "at line 1, column 4: !!timestamp 'x' cannot be read: 'NoneType' object has no"),
        ("b: !!bool maybe", "at line 1, column 4: !!bool 'maybe' cannot be read: 'maybe'"),
    ],
)
def test_values_pyyaml_cannot_build_are_a_yaml_issue(text: str, says: str) -> None:
    (issue,) = echoed(text)
    assert (issue.file, issue.document) == ("mesh.yaml", 0)
    assert issue.message.startswith(f"not valid YAML {says}")


def test_a_lone_surrogate_from_a_json_request_is_an_issue() -> None:
    (issue,) = echoed(json.loads('"kind: \\ud800"'))
    assert issue.message == "not UTF-8 text (character 6); send UTF-8"


@pytest.mark.parametrize("name", ["a\0b.yaml", "d" * 300 + "/m.yaml", "x" * 5_000], ids=["nul", "long-part", "long"])
def test_file_names_no_file_system_takes_are_issues(name: str) -> None:
    (issue,) = echoed("", **{name: "kind: Nope\n"})
    assert issue.file == (name if len(name) <= limits.MAX_NAME_CHARS else limits.clip(name))
    assert ("unknown kind 'Nope'" in issue.message) or "a file name of 5,000 characters" in issue.message


# The CLI, as the operator runs it.


def test_interstate_validate_refuses_the_bomb_in_little_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(9))
    # A parent that reports its child's peak memory: RUSAGE_CHILDREN of this test process would
    # include every process other tests started.
    probe = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(done.stderr)\n"
    )
    cli = [sys.executable, "-c", "from interstate.cli import main; main()", "validate", str(bomb)]
    done = subprocess.run([sys.executable, "-c", probe, *cli], capture_output=True, text=True, timeout=60)
    code, peak_kb = map(int, done.stdout.split())
    assert code == 1
    assert peak_kb < 200 * 1024
    assert "aliases (*name) repeat more than 10,000 values" in done.stderr
    assert len(done.stderr) < 1_000


# The admin API's request body (wired in api/admin.py).


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


def test_a_request_declaring_too_large_a_body_is_refused_before_reading() -> None:
    with pytest.raises(ConfigError) as caught:
        limits.RequestBody(str(limits.MAX_REQUEST_BYTES + 1))
    issue = only(caught.value)
    assert issue.file == "request body"
    assert issue.message.startswith("17,825,793 bytes is over the limit of 17 MiB for one request")

    with pytest.raises(ConfigError, match="at least 1,000,000,000,000,000,000 bytes"):
        limits.RequestBody("1" + "0" * 5_000)  # no int() of five thousand digits either
    with pytest.raises(ConfigError, match="Content-Length is not a number"):
        limits.RequestBody("12, 12")


def test_a_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    body = limits.RequestBody(None, limit=1_000_000)  # chunked: no Content-Length
    sent = 0
    with pytest.raises(ConfigError, match="at least 1,048,576 bytes is over the limit of 1,000,000 bytes"):
        for chunk in chunks(50 * MB):
            sent += len(chunk)
            body.add(chunk)
    assert sent == 1_048_576

    lying = limits.RequestBody("10", limit=1_000)
    with pytest.raises(ConfigError):
        for chunk in chunks(5_000, size=100):
            lying.add(chunk)


def test_a_body_within_the_limit_is_returned_whole() -> None:
    sources: dict[str, Any] = {"sources": {"mesh.yaml": WORKLOAD}}
    raw = json.dumps(sources).encode()
    body = limits.RequestBody(str(len(raw)))
    for i in range(0, len(raw), 7):
        body.add(raw[i : i + 7])
    assert json.loads(body.data()) == sources


def test_the_request_limit_admits_the_largest_mesh_sent_as_json() -> None:
    text = '"\n' * (limits.MAX_MESH_BYTES // 2)  # each character escaped to two in JSON
    assert len(json.dumps({"sources": {"m.yaml": text}})) <= limits.MAX_REQUEST_BYTES
