"""Safe YAML for the inventory: `yaml.safe_load` semantics, with limits and duplicates.

Why our own composer (over PyYAML's event parsers, libyaml's when present): PyYAML's
safe loader silently keeps the last of duplicate keys, recurses once per nesting level
(a deep file is a RecursionError, or a crash), and expands aliases without bound (a
"billion laughs" file takes all memory). Here a file is refused before anything walks
it when it is too large, too deeply nested, or its aliases expand too far, and every
duplicate key is a problem with its key path. Only safe constructors: no tag builds
an object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from fleet.errors import InventoryError, InventoryProblem
from fleet.inventory.schema import join_path
from fleet.textsafe import make_visible_line, show_value

MAX_FILE_BYTES = 16 << 20
MAX_DEPTH = 64  # mapping/sequence nesting; PyYAML's composer recurses per level
MAX_NODES = 2_000_000  # YAML nodes after alias expansion (billion laughs stops here)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(text: str, source: str, problems: list[InventoryProblem]) -> Any:
    """The data of YAML `text`; duplicate keys are appended to `problems`.

    Raises `InventoryError` naming `source` when the text is too large, is not YAML, or
    breaks a limit (whichever parser, ours or libyaml, refuses first: one message).
    """
    if len(text) > MAX_FILE_BYTES:
        raise InventoryError(source, InventoryProblem("", "file is larger than 16 MiB"))
    loader: _GuardedLoader | None = None
    try:
        loader = _LOADER(text, problems)  # the reader may check every character up front
        data = loader.get_single_data()
    except yaml.reader.ReaderError as exc:
        char = exc.character
        where = text.find(chr(char)) if isinstance(char, int) else exc.position
        line = text.count("\n", 0, max(where, 0)) + 1
        code = f"{char:#06x}" if isinstance(char, int) else show_value(char)
        message = f"character {code} is not allowed in YAML"
        raise InventoryError(
            source, [*problems, InventoryProblem(f"line {line}", message)]
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise InventoryError(source, [*problems, _yaml_problem(exc)]) from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        problem = InventoryProblem("", make_visible_line(f"cannot parse YAML: {exc}"))
        raise InventoryError(source, [*problems, problem]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data


def _yaml_problem(exc: yaml.MarkedYAMLError) -> InventoryProblem:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    if "nesting depth" in str(exc.problem):
        # libyaml (PyYAML 6.0.4+) has a nesting limit of its own, met before ours on
        # very deep input: one rule, one message, whichever parser refuses first.
        return InventoryProblem(where, f"nested deeper than {MAX_DEPTH} levels")
    words = " ".join(str(p) for p in (exc.context, exc.problem) if p)
    return InventoryProblem(
        where, make_visible_line(" ".join(words.split())) or "YAML syntax error"
    )


class _PyEvents(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


class _GuardedLoader(
    yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver
):
    """A safe loader with duplicate-key detection and limits on depth and alias expansion.

    Concrete loaders below add the event source (libyaml's or PyYAML's own).
    """

    if TYPE_CHECKING:

        def start_events(self, text: str) -> None: ...
        def peek_event(self) -> Any: ...
        def dispose(self) -> None: ...

    def __init__(self, text: str, problems: list[InventoryProblem]) -> None:
        self.start_events(text)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        yaml.composer.Composer.__init__(self)
        self.problems = problems
        self.depth = 0
        self.paths: dict[int, str] = {}  # id(mapping node) -> its key path

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self) -> Any:
        node: Any = super().compose_document()
        self._weigh(node, "", {}, set())
        return node

    def _weigh(
        self, node: Any, path: str, seen: dict[int, tuple[int, int]], active: set[int]
    ) -> tuple[int, int]:
        """(nodes, height) of `node` once aliases are expanded; records mapping paths.

        Raises `ComposerError` past `MAX_NODES` or `MAX_DEPTH`: what the checks and the
        JSON encoder walk later is the expanded tree, not the text.
        """
        key = id(node)
        if key in seen:
            return seen[key]
        if key in active:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to its own parent", node.start_mark
            )
        active.add(key)
        children: list[tuple[Any, str]] = []
        if isinstance(node, yaml.MappingNode):
            self.paths[key] = path
            for key_node, value_node in node.value:
                label = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                children += [(key_node, path), (value_node, join_path(path, label))]
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        total, height = 1, 0
        for child, child_path in children:
            size, depth = self._weigh(child, child_path, seen, active)
            total, height = total + size, max(height, depth)
            if total > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand to more than {MAX_NODES} nodes", node.start_mark
                )
        if height + 1 > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels through aliases",
                node.start_mark,
            )
        active.discard(key)
        seen[key] = (total, height + 1)
        return seen[key]

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[type, Any], int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # merged keys may be overridden, that is what `<<` is for
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:  # with its type: 1 == True == 1.0 in Python, not in YAML
                    first = seen.get((type(key), key))
                    if first is None:
                        seen[(type(key), key)] = line
                        continue
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                message = f"duplicate key {show_value(key)} (lines {first} and {line})"
                self.problems.append(InventoryProblem(self.paths.get(id(node), ""), message))
        return super().construct_mapping(node, deep=deep)


class _PyLoader(_GuardedLoader, _PyEvents):
    def start_events(self, text: str) -> None:
        _PyEvents.__init__(self, text)


_LOADER: type[_GuardedLoader] = _PyLoader
try:
    from yaml._yaml import CParser

    class _CLoader(_GuardedLoader, CParser):
        def start_events(self, text: str) -> None:
            CParser.__init__(self, text)

    # libyaml parses the same events about six times faster (10k hosts: 0.7 s, not 4 s);
    # our composer and the safe constructor stay in Python, on top of either.
    _LOADER = _CLoader
except ImportError:  # PyYAML built without libyaml
    pass
