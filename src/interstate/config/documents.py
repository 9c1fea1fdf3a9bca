"""YAML text -> plain Python documents, within the limits of `config.limits`.

Called by `config.loader` once per mesh file. PyYAML's parser (libyaml when present, else its
pure-Python twin) produces events; a composer of our own builds the nodes and counts as it goes:
nesting depth, long values, documents, and values after alias expansion. An alias bomb, a deep
nesting or a giant value is refused while it is read, before anything is expanded or validated.
The safe constructor then turns nodes into dicts, lists and scalars (an alias stays one shared
object, never a copy). Returns documents or raises `Unreadable` with the issue; no other I/O.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from interstate.config import limits
from interstate.config.limits import FIXED
from interstate.errors import Issue


class Budget:
    """What one mesh may still read, shared by its files (`config.loader` makes one per mesh)."""

    def __init__(self) -> None:
        self.documents = limits.MAX_MESH_DOCUMENTS
        self.values = limits.MAX_MESH_VALUES
        self.alias_values = limits.MAX_ALIAS_VALUES
        self.spent = False  # a mesh-wide limit was hit: read no further file


class Unreadable(Exception):
    """A file could not be read into documents: not YAML, or over a limit. Carries the issue."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(str(issue))
        self.issue = issue


class _Limit(Exception):
    """Raised inside the composer; `read` turns it into an issue with the document number."""

    def __init__(self, message: str, mesh_wide: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.mesh_wide = mesh_wide


class _CountingComposer(Composer):  # type: ignore[misc]  # PyYAML has no type hints
    """Composer that refuses, while composing, a document over the limits of `config.limits`."""

    def _start_counting(self, budget: Budget) -> None:
        self._budget = budget
        self._depth = 0
        self._values = 0  # in the current document, aliases expanded
        self._sizes: dict[str, int] = {}  # anchor -> values it stands for, once composed

    def compose_document(self) -> Any:
        self._values = 0
        self._sizes = {}
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)  # ComposerError when the anchor is unknown
            size = self._sizes.get(event.anchor)
            if size is None:
                raise _Limit(
                    f"at line {line}: alias *{limits.clip(event.anchor)} is inside the value it names; "
                    "a mesh file cannot repeat a value inside itself"
                )
            self._budget.alias_values -= size
            if self._budget.alias_values < 0:
                raise _Limit(
                    f"at line {line}: aliases (*name) repeat more than {limits.MAX_ALIAS_VALUES:,} values "
                    f"in this mesh ({FIXED}); write the repeated blocks out, or repeat fewer of them",
                    mesh_wide=True,
                )
            self._count(size, line)
            return node
        if isinstance(event, ScalarEvent) and len(event.value) > limits.MAX_VALUE_CHARS:
            raise _Limit(
                f"at line {line}: a value of {len(event.value):,} characters is over the limit of "
                f"{limits.MAX_VALUE_CHARS:,} ({FIXED})"
            )
        if isinstance(event, CollectionStartEvent) and self._depth >= limits.MAX_DEPTH:
            raise _Limit(
                f"at line {line}: nested more than {limits.MAX_DEPTH} levels deep ({FIXED}); "
                "a mesh resource needs far fewer"
            )
        before = self._values
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, line)
        if event.anchor is not None:
            self._sizes[event.anchor] = self._values - before
        return node

    def _count(self, values: int, line: int) -> None:
        self._values += values
        self._budget.values -= values
        if self._values > limits.MAX_DOCUMENT_VALUES:
            raise _Limit(
                f"at line {line}: more than {limits.MAX_DOCUMENT_VALUES:,} values in one document, "
                f"counting each alias as the values it repeats ({FIXED}); split the resource "
                "or write fewer aliases"
            )
        if self._budget.values < 0:
            raise _Limit(
                f"at line {line}: more than {limits.MAX_MESH_VALUES:,} values in the mesh, counting each alias "
                f"as the values it repeats ({FIXED}); this mesh is larger than interstate reads",
                mesh_wide=True,
            )


class _CheckedConstructor(SafeConstructor):  # type: ignore[misc]
    """PyYAML's safe constructor, with its crashes on odd scalars turned into YAML errors:
    `!!int ''` (IndexError), `!!timestamp x` (AttributeError), `2001-13-45` (ValueError)."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, ArithmeticError, LookupError, AttributeError) as exc:
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            value = limits.show(node.value) if isinstance(node.value, str) else "value"
            why = limits.clip(str(exc)) or type(exc).__name__
            raise ConstructorError(
                None, None, f"{limits.clip(tag)} {value} cannot be read: {why}", node.start_mark
            ) from None


class _PythonParser(Reader, Scanner, Parser):  # type: ignore[misc]
    """PyYAML's pure-Python parser, for an installation of PyYAML built without libyaml."""

    def __init__(self, stream: bytes) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)


def _loader(parser: type) -> type:
    """A loader class: `parser`'s events, our counting composer, PyYAML's safe constructor."""

    class Loader(_CountingComposer, parser, _CheckedConstructor, Resolver):  # type: ignore[misc]
        def __init__(self, stream: bytes, budget: Budget) -> None:
            parser.__init__(self, stream)  # type: ignore[misc]
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._start_counting(budget)

    return Loader


def _loaders() -> dict[str, type]:
    found = {}
    try:
        from yaml.cyaml import CParser
    except ImportError:  # PyYAML built without libyaml: the same rules, about five times slower
        pass
    else:
        found["libyaml"] = _loader(CParser)
    found["python"] = _loader(_PythonParser)
    return found


# {"libyaml": ..., "python": ...}: the loader classes available here, the fastest first.
LOADERS: dict[str, type] = _loaders()


def read(file: str, data: bytes, budget: Budget, loader: type | None = None) -> list[Any]:
    """The documents of one file (UTF-8 `data`), or `Unreadable`. Every limit of `config.limits`
    that applies while reading is checked here; `budget` carries the mesh-wide ones across files."""
    cls = loader or next(iter(LOADERS.values()))
    documents: list[Any] = []
    number = 0
    reader = cls(data, budget)
    try:
        while reader.check_data():
            number += 1
            budget.documents -= 1
            if number > limits.MAX_DOCUMENTS:
                raise _Limit(f"more than {limits.MAX_DOCUMENTS:,} documents in one file ({FIXED}); split the file")
            if budget.documents < 0:
                raise _Limit(
                    f"more than {limits.MAX_MESH_DOCUMENTS:,} documents in the mesh ({FIXED}); "
                    "this mesh is larger than interstate reads",
                    mesh_wide=True,
                )
            documents.append(reader.get_data())
    except _Limit as exc:
        budget.spent = budget.spent or exc.mesh_wide
        raise Unreadable(Issue(file, number, "", "", exc.message)) from None
    except yaml.YAMLError as exc:
        raise Unreadable(Issue(file, 0, "", "", _yaml_problem(exc))) from None
    except (ValueError, TypeError, ArithmeticError, LookupError, AttributeError) as exc:  # not seen yet
        raise Unreadable(Issue(file, number, "", "", f"not valid YAML ({type(exc).__name__})")) from None
    finally:
        reader.dispose()
    return documents


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    if "maximum nesting depth" in problem:  # libyaml's own cap (1000), met before ours in flow style
        return f"nested more than {limits.MAX_DEPTH} levels deep{where} ({FIXED}); a mesh resource needs far fewer"
    return f"not valid YAML{where}: {limits.clip(problem, 2 * limits.MAX_ECHO_CHARS)}"
