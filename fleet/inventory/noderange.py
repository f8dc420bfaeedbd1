"""Host names and node ranges: ``web[01-12]`` expands, ``web[01-04,07]`` folds back.

Expansion and folding are ClusterShell's `NodeSet` (the HPC field's implementation,
multi-dimensional ranges included). We put a strict gate in front of it: a name is
checked against our own small grammar and its size is counted *before* NodeSet sees
it, because NodeSet also understands operators (``,`` ``!`` ``&`` ``^``), ``@group``
lookups in system config files, and will happily build a hundred million strings.

Host patterns may put glob characters around the brackets (``host-[10-12]*``): with
``globs=True`` the gate lets ``*`` and ``?`` through outside brackets, and NodeSet keeps
them as plain characters of each name (``host-10*``, ``host-11*``, ``host-12*``).

ClusterShell is imported by the two functions that call NodeSet, when they do: names
without ranges (checked here, not by NodeSet) load none of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fleet.errors import PatternError

#: A range that expands to more hosts than this is refused before it is expanded.
MAX_RANGE_HOSTS = 100_000
#: `count_range` stops multiplying past this (a key of many 64-digit brackets would
#: otherwise build a huge integer just to be refused).
COUNT_CAP = 10**18

# Characters the pattern language (``web,db:&prod:!web03``, globs) or NodeSet's own
# syntax gives a meaning to: a name holding one could never be selected reliably.
_RESERVED = frozenset(",:!&*?[]@^")
_SUSPECT = re.compile(r"[\s,:!&*?\[\]@^]")  # a fast first look; the loop says why
#: Longer names are refused (DNS names stop at 253): each listing checks its name.
MAX_NAME_LENGTH = 255
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_RANGE_ITEM = re.compile(r"(\d+)(?:-(\d+)(?:/(\d+))?)?")


def name_problem(name: object, what: str = "host name") -> str | None:
    """Why `name` is not a valid plain (range-free) name, or None when it is."""
    if not isinstance(name, str):
        return f"{what} must be a string, got {name!r}"
    if not name:
        return f"{what} is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"{what} {name[:40]!r}... is longer than {MAX_NAME_LENGTH} characters"
    if name.startswith("-"):
        return f"{what} {name!r} starts with '-'"
    if name.isprintable() and _SUSPECT.search(name) is None:
        return None
    for char in name:
        if char.isspace() or not char.isprintable():
            return f"{what} {name!r} contains whitespace or a control character"
        if char in _RESERVED:
            return f"{what} {name!r} contains {char!r}, which patterns reserve"
    return None


def has_range(text: str) -> bool:
    return "[" in text or "]" in text


def _literal_problem(literal: str, globs: bool) -> str | None:
    """Why `literal` (a name with its brackets replaced) is no valid name, or None."""
    return name_problem(literal.replace("*", "x").replace("?", "x") if globs else literal)


def count_range(text: str, *, globs: bool = False) -> int:
    """How many names `text` expands to, computed without expanding it.

    Exact up to `COUNT_CAP`; a larger result only says "more than `COUNT_CAP`".

    Raises `PatternError` when `text` is not a name with ``[...]`` ranges of our grammar:
    items ``N``, ``N-M`` or ``N-M/STEP``, separated by commas. With `globs`, ``*`` and
    ``?`` are allowed outside the brackets.
    """
    total = 1
    literal = _BRACKET.sub("0", text)
    if "[" in literal or "]" in literal:
        raise PatternError(f"bad range {_brief(text)}: unbalanced or nested brackets")
    problem = _literal_problem(literal, globs)
    if problem:
        raise PatternError(f"bad range {_brief(text)}: {problem}")
    for body in _BRACKET.findall(text):
        size = 0
        for item in body.split(","):
            match = _RANGE_ITEM.fullmatch(item) if len(item) <= 64 else None
            if match is None:
                raise PatternError(f"bad range {_brief(text)}: {item!r} is not N, N-M or N-M/STEP")
            low, high, step = match.groups()
            if high is None:
                size += 1
            elif int(high) >= int(low) and int(step or 1) > 0:
                size += (int(high) - int(low)) // int(step or 1) + 1
        total *= max(size, 1)
        if total > COUNT_CAP:
            break
    return total


def expand_hosts(text: str, *, globs: bool = False) -> list[str]:
    """The names a host name with node ranges stands for, in NodeSet order.

    ``expand_hosts("rack[1-2]-node[01-02]")`` gives
    ``["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]``; a name
    without brackets gives itself. With `globs`, ``*`` and ``?`` outside the brackets are
    kept as they are in each name (a host pattern's globs). Raises `PatternError` for a
    malformed range or name, or a range of more than `MAX_RANGE_HOSTS` names.
    """
    if not has_range(text):
        problem = _literal_problem(text, globs)
        if problem:
            raise PatternError(problem)
        return [text]
    size = count_range(text, globs=globs)
    if size > MAX_RANGE_HOSTS:
        raise PatternError(f"range {_brief(text)} expands to more than {MAX_RANGE_HOSTS} hosts")
    from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

    try:
        return list(NodeSet(text, resolver=RESOLVER_NOGROUP))
    except (NodeSetException, AssertionError, ValueError) as exc:
        raise PatternError(f"bad range {_brief(text)}: {exc}") from exc


def _brief(text: str) -> str:
    """`text` quoted for a message, shortened: a key may be megabytes long."""
    return repr(text) if len(text) <= 80 else repr(text[:60]) + f"... ({len(text)} characters)"


def fold_hosts(names: Iterable[str], *, globs: bool = False) -> str:
    """Fold host names for display: ``web01 web02 web03 web04 web07`` -> ``web[01-04,07]``.

    Names NodeSet could misread (holding a comma, a bracket...) are listed as they are;
    with `globs`, names holding ``*`` or ``?`` are folded too (``host-[16-17]*``).
    """
    names = list(dict.fromkeys(names))
    plain = [n for n in names if _literal_problem(n, globs) is None]
    odd = sorted(n for n in names if _literal_problem(n, globs) is not None)
    parts = []
    if plain:
        from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

        try:
            parts.append(str(NodeSet.fromlist(plain, resolver=RESOLVER_NOGROUP)))
        except (NodeSetException, AssertionError, ValueError):
            parts.append(",".join(sorted(plain)))
    parts.extend(odd)
    return ",".join(parts)
