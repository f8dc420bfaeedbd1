"""Host patterns: Ansible's syntax plus clush node ranges, never wider than what is typed.

Sources: Ansible's "Patterns: targeting hosts and groups" (terms, ``&``, ``!``, globs,
subscripts, ``~`` regexes) and ClusterShell's node-set syntax (``web[01-03,07]``,
``rack[1-2]-n[1-4]``, ``web[1-9/2]``). The rules:

Terms. A pattern is terms separated by ``,`` or ``:``, except inside ``[...]``
(``db[1-3,7]`` is one term); spaces around a term are ignored. An empty term is
refused (``a::b``, ``web,``, ``:web``); a pattern with no term at all is an empty
pattern. ``&term`` intersects and ``!term`` excludes: an operator needs a name after
it, and a term takes one operator (``!&web`` is refused). As in Ansible, every plain
term is applied first (union), then every ``&`` term, then every ``!`` term, whatever
their order; a pattern of only ``&``/``!`` terms starts from ``all``.

Each term is, the first that applies:

1. ``all`` or ``*``: every host;
2. a group name (its hosts and its children's hosts) or a host name, exactly;
3. with ``[...]``: a node range, always (never an fnmatch character class: ``[ab]`` is
   a bad range). The range is expanded first, then each of its names is resolved as a
   term of its own, so a range means what the comma list of its names means:
   ``web0[1-3]`` is ``web01,web02,web03`` and ``host-[10-12]*`` is
   ``host-10*,host-11*,host-12*``;
4. with ``*`` or ``?``: a glob (fnmatch, case-sensitive) on group and host names.

A term, or one name of a range, that matches no group or host is an error, also after
``!`` (a mistyped exclusion would otherwise run the command on the host one meant to
leave out). So a selection is never wider than the names typed.

Subscripts. Ansible reads a term ending in ``[N]``, ``[-N]``, ``[N:M]``, ``[N:]`` or
``[N-M]`` as positions (from 0, both ends included) in the hosts its prefix selects:
``web[0]`` is group web's first host. fleet has no subscripts (a position moves when
the inventory changes, and fleet's host order is not Ansible's), and never reads one
as the other:

- ``[-N]``, ``[N:M]``, ``[N:]`` and ``[N-]`` are no node range: always refused;
- ``[N]`` and ``[N-M]`` are refused as ambiguous when their prefix selects on its own
  (a group, even an empty one, ``all``, ``*``, a host, a glob that matches): ``web[1]``
  with a group ``web``; the message shows both readings. For hosts by position, name
  them (``fleet hosts web`` lists them). For the node range, write its names
  (``web1``, ``web1,web2``) or give the range a step, which no subscript has:
  ``web[1-2/1]``;
- when the prefix selects nothing, the term is a node range: ``web[1-3]`` for hosts
  web1..web3 when no group or host is called ``web``.

Regular expressions (``~(web|db).*``) are not supported and are refused as such.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping
from fnmatch import translate
from functools import lru_cache

from fleet.errors import PatternError
from fleet.inventory.noderange import expand_hosts, fold_hosts, has_range

_GLOB_CHARS = frozenset("*?")
_KNOWN_SHOWN = 30  # group names listed in an "unknown name" message
_LISTED = 8  # an ambiguous range of at most this many names is spelled out
#: Names one term's globs may be tested against in all (a leading '*' on a big range
#: would otherwise test every range name against every inventory name).
MATCH_BUDGET = 2_000_000
_PAST_ANY = "\U0010ffff"  # sorts after every printable name with the same start
# Ansible's PATTERN_WITH_SUBSCRIPT: PREFIX[N], [-N], [N:M], [N:], [N-M] or [N-].
_SUBSCRIPT = re.compile(r"(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]", re.DOTALL)
_GLOB_CHAR = re.compile(r"[*?]")
_CLASS_LIKE = re.compile(r"\[[^\]]*[^0-9,/\]-]")  # a bracket holding a non-range char


def split_pattern(pattern: str) -> list[str]:
    """The terms of `pattern`, stripped, in order; empty ones kept (as ``""``)."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for char in pattern:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        if char in ",:" and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    terms.append("".join(current).strip())
    return terms


def resolve_pattern(
    pattern: str, groups: Mapping[str, Collection[str]], hosts: Collection[str]
) -> set[str]:
    """The host names `pattern` selects (possibly none).

    `groups` maps each group name to all its hosts (children's included); `hosts` holds
    every host name. Raises `PatternError` for an empty pattern or term, a malformed
    range, a subscript, a regex, or a term that matches no group or host.
    """
    scope = _Scope(pattern.strip(), groups, hosts)
    terms = split_pattern(pattern)
    if not any(terms):
        raise PatternError(f"empty pattern {pattern!r}")
    by_operator: dict[str, list[str]] = {"": [], "&": [], "!": []}
    for index, term in enumerate(terms):  # every syntax error before any lookup
        operator, name = _parse_term(term, index == 0, index == len(terms) - 1, scope)
        by_operator[operator].append(name)
    selected: set[str] = set()
    for name in by_operator[""] or ["all"]:
        selected |= _resolve(name, scope)
    for name in by_operator["&"]:
        selected &= _resolve(name, scope)
    for name in by_operator["!"]:
        selected -= _resolve(name, scope)
    return selected


class _Scope:
    """What terms resolve against, and the whole pattern (for messages)."""

    def __init__(
        self, whole: str, groups: Mapping[str, Collection[str]], hosts: Collection[str]
    ) -> None:
        self.whole = whole
        self.groups = groups
        self.hosts = hosts
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        """Every group and host name, sorted (built once, on first use)."""
        if self._names is None:
            self._names = sorted({*self.groups, *self.hosts})
        return self._names

    def label(self, term: str) -> str:
        whole = self.whole
        return f"pattern {term!r}" if term == whole else f"pattern {term!r} (in {whole!r})"

    def known(self) -> str:
        names = sorted(self.groups)
        if not names:
            return "the inventory has no groups"
        shown = ", ".join(names[:_KNOWN_SHOWN])
        more = f" and {len(names) - _KNOWN_SHOWN} more" if len(names) > _KNOWN_SHOWN else ""
        return f"known groups: {shown}{more}"

    def unknown(self, term: str) -> PatternError:
        return PatternError(f"{self.label(term)} matches no group or host ({self.known()})")


def _parse_term(term: str, first: bool, last: bool, scope: _Scope) -> tuple[str, str]:
    """`term`'s operator (``""``, ``&`` or ``!``) and name; raises on a malformed term."""
    if not term:
        where = (
            "it starts with a separator"
            if first
            else "it ends with a separator"
            if last
            else "two separators in a row"
        )
        raise PatternError(
            f"pattern {scope.whole!r} has an empty term: {where} (separate names with "
            "one ',' or ':')"
        )
    operator = term[0] if term[0] in "&!" else ""
    name = term[len(operator) :].strip()
    if not name:
        raise PatternError(f"pattern {scope.whole!r} has {operator!r} with no name after it")
    if name[0] in "&!":
        raise PatternError(
            f"{scope.label(term)} has two operators: use one, '&' (and) or '!' (not)"
        )
    if name[0] == "~" and name not in scope.groups and name not in scope.hosts:
        raise PatternError(
            f"{scope.label(name)}: regular expressions (~) are not supported; use globs "
            "('*', '?') or node ranges ('[01-03]')"
        )
    return operator, name


def _resolve(term: str, scope: _Scope) -> set[str]:
    if term in ("all", "*"):
        return set(scope.hosts)
    found = _exact(term, scope)
    if found is not None:
        return found
    if has_range(term):
        return _resolve_range(term, scope)
    if not _GLOB_CHARS.isdisjoint(term):
        found = _match_globs([term], term, scope)[term]
        if found is not None:
            return found
    raise scope.unknown(term)


def _exact(name: str, scope: _Scope) -> set[str] | None:
    """The hosts of group `name`, or host `name` itself; None when it is neither."""
    if name in scope.groups:
        return set(scope.groups[name])
    if name in scope.hosts:
        return {name}
    return None


def _resolve_range(term: str, scope: _Scope) -> set[str]:
    """A term with ``[...]``: expanded, then each name resolved; each must match."""
    _refuse_subscript(term, scope)
    globbed = not _GLOB_CHARS.isdisjoint(term)
    try:
        names = expand_hosts(term, globs=globbed)
    except PatternError as exc:
        hint = ""
        if _CLASS_LIKE.search(term):
            hint = " (brackets in a pattern are node ranges, not character classes)"
        raise PatternError(f"{scope.label(term)}: {exc}{hint}") from None
    if globbed:
        matches = _match_globs(names, term, scope)
    else:
        matches = {name: _exact(name, scope) for name in names}
    found: set[str] = set()
    unknown: list[str] = []
    for name in names:
        hit = matches[name]
        if hit is None:
            unknown.append(name)
        else:
            found |= hit
    if len(unknown) == len(names):
        raise scope.unknown(term)
    if unknown:
        folded = fold_hosts(unknown, globs=globbed)
        if globbed:
            what = f": {folded} match no group or host"
        else:
            what = f" names unknown hosts: {folded}"
        raise PatternError(f"{scope.label(term)}{what} ({scope.known()})")
    return found


def _match_globs(globs: list[str], term: str, scope: _Scope) -> dict[str, set[str] | None]:
    """What each glob selects (None: it matches no name). Each is tested only against
    the names that start with its literal start, found by bisection in sorted names."""
    names = scope.names()
    spans: list[tuple[int, int]] = []
    for glob in globs:
        start = _GLOB_CHAR.split(glob, maxsplit=1)[0]
        low = bisect_left(names, start)
        spans.append((low, bisect_left(names, start + _PAST_ANY, low)))
    work = sum(high - low for low, high in spans)
    if work > MATCH_BUDGET:
        raise PatternError(
            f"{scope.label(term)} is too broad to check: its {len(globs)} globs would be "
            f"tried on {work} names (limit {MATCH_BUDGET}); start it with a literal part "
            "of the names rather than '*' or '?'"
        )
    result: dict[str, set[str] | None] = {}
    for glob, (low, high) in zip(globs, spans, strict=True):
        cut = len(_GLOB_CHAR.split(glob, maxsplit=1)[0])  # the literal start's length
        if low == high or glob[cut:] == "*":
            hits = names[low:high]  # none, or 'start*': every name with that start
        else:  # match the rest only: a range's globs often share it ('?' in 'n[1-9]?')
            match = _compile_rest(glob[cut:])
            hits = [name for name in names[low:high] if match(name, cut)]
        found: set[str] = set()
        for name in hits:
            if name in scope.groups:
                found.update(scope.groups[name])
            if name in scope.hosts:
                found.add(name)
        result[glob] = found if hits else None
    return result


@lru_cache(maxsize=256)
def _compile_rest(glob: str) -> Callable[[str, int], re.Match[str] | None]:
    return re.compile(translate(glob)).match


def _refuse_subscript(term: str, scope: _Scope) -> None:
    """Raise `PatternError` when `term` is an Ansible subscript, or may be read as one."""
    shape = _SUBSCRIPT.fullmatch(term)
    if shape is None:
        return
    prefix, index, start, separator, end = shape.groups()
    selects = _selects(prefix, scope)
    range_shaped = (index is not None and not index.startswith("-")) or bool(
        separator == "-" and end
    )
    if range_shaped and not selects:
        return  # a node range, the only reading
    label = scope.label(term)
    if not selects:
        hint = f"; for a node range write {f'{prefix}[{start}-{end}]'!r}" if end else ""
        raise PatternError(f"{label} is an Ansible subscript, which fleet does not support{hint}")
    of = f"group {prefix!r}" if prefix in scope.groups else repr(prefix)
    if index is not None and index.startswith("-"):
        positions = f"the host at position {int(index)} of {of} (counting back from the end)"
    elif index is not None:
        positions = f"the host at position {int(index)} of {of} (counting from 0)"
    elif not end:
        positions = f"the hosts from position {int(start)} of {of} (counting from 0) to the end"
    else:
        positions = f"the hosts at positions {int(start)} to {int(end)} of {of} (counting from 0)"
    names = _range_names(term) if range_shaped else []
    if names:
        raise PatternError(
            f"{label} is ambiguous: in Ansible it is a subscript, {positions}, which fleet "
            f"does not support; as a node range it means {_range_reading(term, names, scope)}"
        )
    raise PatternError(
        f"{label} is an Ansible subscript, {positions}: fleet does not support "
        f"subscripts; name the hosts you mean (fleet hosts {prefix!r} lists them)"
    )


def _range_names(term: str) -> list[str]:
    """The names node range `term` expands to; none when it is no valid range."""
    try:
        return expand_hosts(term, globs=not _GLOB_CHARS.isdisjoint(term))
    except PatternError:
        return []


def _range_reading(term: str, names: list[str], scope: _Scope) -> str:
    """The node-range reading of an ambiguous `term`, and how to write it unambiguously."""
    shown = repr(",".join(names)) if len(names) <= _LISTED else f"{names[0]} to {names[-1]}"
    if _GLOB_CHARS.isdisjoint(term) and all(_exact(name, scope) is None for name in names):
        return f"{shown}, which names no group or host"
    if len(names) == 1:
        return f"{names[0]!r}: to select that, write {names[0]!r}"
    stepped = f"{term[:-1]}/1]"  # 'web[1-2]' -> 'web[1-2/1]': a step, so no subscript
    if len(names) > _LISTED:
        return f"{len(names)} names, {names[0]} to {names[-1]}: to select those, write {stepped!r}"
    listed = ",".join(names)
    return f"{listed!r}: to select those, write {listed!r} or {stepped!r}"


def _selects(prefix: str, scope: _Scope) -> bool:
    """Whether `prefix`, as a term on its own, names a group or selects hosts."""
    if prefix in scope.groups:
        return True
    try:
        return bool(_resolve(prefix, scope))
    except PatternError:
        return False
