"""Host patterns, with Ansible's syntax so that ops teams already know them.

Terms are separated by ``,`` or ``:`` (outside ``[...]``, so ``db[1-3,7]`` is one
term). Each term is one of:

- ``all`` or ``*``: every host;
- a group name (its hosts and its children's hosts) or a host name;
- a node range, ``web[01-03]``: each name in it must be a host or a group;
- a glob, ``web*`` or ``db?``: matched (fnmatch, case-sensitive) against group names
  and host names.

A term prefixed by ``&`` intersects, by ``!`` excludes. As in Ansible, every plain
term is applied first (union), then every ``&`` term, then every ``!`` term, whatever
their order in the pattern; a pattern with only ``&``/``!`` terms starts from ``all``.

A term that names nothing is an error, also after ``!``: a mistyped exclusion would
otherwise silently run the command on the host one meant to leave out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from fnmatch import fnmatchcase

from fleet.errors import PatternError
from fleet.inventory.noderange import expand_hosts, fold_hosts, has_range

_GLOB_CHARS = frozenset("*?")
_KNOWN_SHOWN = 30  # group names listed in an "unknown name" message


def split_pattern(pattern: str) -> list[str]:
    """The terms of `pattern`, stripped, in order; empty terms dropped."""
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
    return [t for t in terms if t]


def resolve_pattern(
    pattern: str, groups: Mapping[str, Collection[str]], hosts: Collection[str]
) -> set[str]:
    """The host names `pattern` selects (possibly none).

    `groups` maps each group name to all its hosts (children's included); `hosts` holds
    every host name. Raises `PatternError` for an empty pattern, a malformed range, or
    a term that matches no group or host.
    """
    terms = split_pattern(pattern)
    if not terms:
        raise PatternError(f"empty pattern {pattern!r}")
    unions: list[str] = []
    intersections: list[str] = []
    exclusions: list[str] = []
    for term in terms:
        if term.startswith("&"):
            intersections.append(term[1:].strip())
        elif term.startswith("!"):
            exclusions.append(term[1:].strip())
        else:
            unions.append(term)
    if not unions:
        unions = ["all"]
    whole = pattern.strip()
    selected: set[str] = set()
    for term in unions:
        selected |= _resolve_term(term, whole, groups, hosts)
    for term in intersections:
        selected &= _resolve_term(term, whole, groups, hosts)
    for term in exclusions:
        selected -= _resolve_term(term, whole, groups, hosts)
    return selected


def _resolve_term(
    term: str, whole: str, groups: Mapping[str, Collection[str]], hosts: Collection[str]
) -> set[str]:
    if not term:
        raise PatternError(f"pattern {whole!r} has '&' or '!' with no name after it")
    if term in ("all", "*"):
        return set(hosts)
    if term in groups:
        return set(groups[term])
    if term in hosts:
        return {term}
    if _GLOB_CHARS & set(term):
        found: set[str] = set()
        for name, members in groups.items():
            if fnmatchcase(name, term):
                found.update(members)
        found.update(h for h in hosts if fnmatchcase(h, term))
        if found:
            return found
    elif has_range(term):
        return _resolve_range(term, whole, groups, hosts)
    raise PatternError(f"{_label(term, whole)} matches no group or host ({_known(groups)})")


def _resolve_range(
    term: str, whole: str, groups: Mapping[str, Collection[str]], hosts: Collection[str]
) -> set[str]:
    try:
        names = expand_hosts(term)
    except PatternError as exc:
        raise PatternError(f"{_label(term, whole)}: {exc}") from None
    found: set[str] = set()
    unknown: list[str] = []
    for name in names:
        if name in groups:
            found.update(groups[name])
        elif name in hosts:
            found.add(name)
        else:
            unknown.append(name)
    if unknown:
        raise PatternError(
            f"{_label(term, whole)} names unknown hosts: {fold_hosts(unknown)} ({_known(groups)})"
        )
    return found


def _label(term: str, whole: str) -> str:
    return f"pattern {term!r}" if term == whole else f"pattern {term!r} (in {whole!r})"


def _known(groups: Iterable[str]) -> str:
    names = sorted(groups)
    if not names:
        return "the inventory has no groups"
    shown = ", ".join(names[:_KNOWN_SHOWN])
    more = f" and {len(names) - _KNOWN_SHOWN} more" if len(names) > _KNOWN_SHOWN else ""
    return f"known groups: {shown}{more}"
