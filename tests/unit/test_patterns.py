"""Patterns, Ansible syntax: union, intersection, exclusion, globs, ranges, errors."""

from __future__ import annotations

import pytest

from fleet.errors import PatternError
from fleet.inventory.loader import Inventory, parse_inventory
from fleet.inventory.patterns import split_pattern

TEXT = """
groups:
  web:
    hosts:
      web[01-04]: {}
      web07: {}
  db:
    hosts:
      db[1-3]: {}
  local:
    hosts:
      localhost: {connection: local}
  prod:
    children: [web, db]
    hosts:
      web07: {}
  staging:
    hosts:
      db3: {}
"""


@pytest.fixture
def inv() -> Inventory:
    return parse_inventory(TEXT, "inventory.yaml")


def names(inv: Inventory, pattern: str) -> list[str]:
    return [h.name for h in inv.select(pattern)]


ALL = ["web01", "web02", "web03", "web04", "web07", "db1", "db2", "db3", "localhost"]


@pytest.mark.parametrize("pattern", ["all", "*", " all "])
def test_all(inv: Inventory, pattern: str) -> None:
    assert names(inv, pattern) == ALL


def test_group(inv: Inventory) -> None:
    assert names(inv, "db") == ["db1", "db2", "db3"]


def test_group_includes_children(inv: Inventory) -> None:
    assert names(inv, "prod") == ["web01", "web02", "web03", "web04", "web07", "db1", "db2", "db3"]


@pytest.mark.parametrize("pattern", ["web,db", "web:db", "db,web", "web, db"])
def test_union_is_in_inventory_order(inv: Inventory, pattern: str) -> None:
    assert names(inv, pattern) == ["web01", "web02", "web03", "web04", "web07", "db1", "db2", "db3"]


def test_union_with_overlap_lists_each_host_once(inv: Inventory) -> None:
    hosts = inv.select("db,staging,prod")
    assert [h.name for h in hosts].count("db3") == 1
    db3 = next(h for h in hosts if h.name == "db3")
    assert set(db3.groups) == {"db", "prod", "staging"}


def test_intersection(inv: Inventory) -> None:
    assert names(inv, "db:&staging") == ["db3"]
    assert names(inv, "all:&prod:&db") == ["db1", "db2", "db3"]


def test_exclusion(inv: Inventory) -> None:
    assert names(inv, "web:!web03") == ["web01", "web02", "web04", "web07"]
    assert names(inv, "prod:!web") == ["db1", "db2", "db3"]


def test_combination(inv: Inventory) -> None:
    assert names(inv, "web,db:&prod:!web03") == [
        "web01",
        "web02",
        "web04",
        "web07",
        "db1",
        "db2",
        "db3",
    ]
    assert names(inv, "web,db,local:&prod:!db1:!web0[1-2]") == [
        "web03",
        "web04",
        "web07",
        "db2",
        "db3",
    ]


def test_operators_apply_in_ansible_order_not_written_order(inv: Inventory) -> None:
    # Exclusions last, whatever their place: '!web03' first still removes web03.
    assert names(inv, "!web03:web") == names(inv, "web:!web03")
    # Intersections after every union: 'db' added after '&staging' is still intersected.
    assert names(inv, "web:&staging:db") == ["db3"]


def test_only_exclusions_start_from_all(inv: Inventory) -> None:
    assert names(inv, "!prod") == ["localhost"]
    assert names(inv, "&db") == ["db1", "db2", "db3"]


def test_glob_on_groups_and_hosts(inv: Inventory) -> None:
    assert names(inv, "w*") == ["web01", "web02", "web03", "web04", "web07"]
    assert names(inv, "*07") == ["web07"]
    assert names(inv, "db?") == ["db1", "db2", "db3"]
    assert names(inv, "stag*") == ["db3"]  # a group matched by glob
    assert names(inv, "prod:!web0[1-3]*") == ["web04", "web07", "db1", "db2", "db3"]


def test_bare_host_name(inv: Inventory) -> None:
    assert names(inv, "web07") == ["web07"]
    assert names(inv, "localhost,db2") == ["db2", "localhost"]


def test_range_pattern(inv: Inventory) -> None:
    assert names(inv, "web[01-03]") == ["web01", "web02", "web03"]
    assert names(inv, "db[1-2,3]:!db2") == ["db1", "db3"]


def test_range_naming_unknown_hosts_is_an_error(inv: Inventory) -> None:
    with pytest.raises(PatternError, match=r"unknown hosts: web\[05-06\]"):
        inv.select("web[01-06]")


def test_malformed_range_pattern(inv: Inventory) -> None:
    with pytest.raises(PatternError, match="range"):
        inv.select("web[01-")


def test_unknown_name_message(inv: Inventory) -> None:
    with pytest.raises(PatternError) as err:
        inv.select("wbe")
    assert str(err.value) == (
        "pattern 'wbe' matches no group or host (known groups: db, local, prod, staging, web)"
    )


def test_unknown_name_inside_a_combination_names_both(inv: Inventory) -> None:
    with pytest.raises(PatternError, match=r"pattern 'wbe' \(in 'db:&wbe'\) matches no group"):
        inv.select("db:&wbe")


def test_mistyped_exclusion_is_an_error_not_ignored(inv: Inventory) -> None:
    with pytest.raises(PatternError, match="'web3'"):
        inv.select("web:!web3")


def test_glob_matching_nothing(inv: Inventory) -> None:
    with pytest.raises(PatternError, match="matches no group or host"):
        inv.select("zz*")


def test_empty_selection_message(inv: Inventory) -> None:
    with pytest.raises(PatternError) as err:
        inv.select("web:&db")
    assert str(err.value) == "pattern 'web:&db' matched no hosts"


@pytest.mark.parametrize("pattern", ["", " ", ",", "::"])
def test_empty_pattern(inv: Inventory, pattern: str) -> None:
    with pytest.raises(PatternError, match="empty pattern"):
        inv.select(pattern)


def test_operator_without_name(inv: Inventory) -> None:
    with pytest.raises(PatternError, match="no name after it"):
        inv.select("web:!")


def test_empty_group_selects_nothing(inv: Inventory) -> None:
    empty = parse_inventory("groups: {web: {hosts: {a: null}}, spare: null}", "x")
    with pytest.raises(PatternError, match="matched no hosts"):
        empty.select("spare")


def test_select_returns_host_values(inv: Inventory) -> None:
    (host,) = inv.select("localhost")
    assert host.is_local and host.address == "localhost"


def test_split_keeps_commas_inside_brackets() -> None:
    assert split_pattern("db[1-3,7],web:&prod:!web[01,03]") == [
        "db[1-3,7]",
        "web",
        "&prod",
        "!web[01,03]",
    ]


def test_many_hosts_select_linear() -> None:
    text = "groups:\n  big: {hosts: {'n[00001-10000]': {}}}\n  few: {hosts: {n00005: {}}}\n"
    inv = parse_inventory(text, "big.yaml")
    assert len(inv.hosts) == 10000
    assert len(inv.select("big:!few")) == 9999
    assert len(inv.select("n0000*")) == 9
