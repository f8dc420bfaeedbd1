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
    # 'web' is a group, so 'web[01-03]' would be ambiguous (see the subscript tests).
    assert names(inv, "web0[1-3]") == ["web01", "web02", "web03"]
    assert names(inv, "web[01-03/1]") == ["web01", "web02", "web03"]
    assert names(inv, "db[1-2,3]:!db2") == ["db1", "db3"]


def test_range_naming_unknown_hosts_is_an_error(inv: Inventory) -> None:
    with pytest.raises(PatternError, match=r"unknown hosts: web\[05-06\]"):
        inv.select("web0[1-6]")


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


def test_split_keeps_empty_terms_for_resolve_to_refuse() -> None:
    assert split_pattern("a::b") == ["a", "", "b"]
    assert split_pattern(" web, ") == ["web", ""]
    assert split_pattern("web[1:3]:db") == ["web[1:3]", "db"]


def test_many_hosts_select_linear() -> None:
    text = "groups:\n  big: {hosts: {'n[00001-10000]': {}}}\n  few: {hosts: {n00005: {}}}\n"
    inv = parse_inventory(text, "big.yaml")
    assert len(inv.hosts) == 10000
    assert len(inv.select("big:!few")) == 9999
    assert len(inv.select("n0000*")) == 9


# --- Issue 11, point 1: a pattern never selects more than the user typed. ---------------

RANGED = """
groups:
  my_hosts:
    hosts:
      host-[10-15]: {}
  rack1: {hosts: {r1a: {}, r1b: {}}}
  rack2: {hosts: {r2a: {}}}
"""


@pytest.fixture
def ranged() -> Inventory:
    return parse_inventory(RANGED, "ranged.yaml")


SIX = ["host-10", "host-11", "host-12", "host-13", "host-14", "host-15"]


# Kind 1: brackets in a term are always a node range, also next to a glob: the range is
# expanded first, then each name is resolved (as a glob if it holds '*' or '?').


def test_range_with_glob_matching_nothing_is_an_error(ranged: Inventory) -> None:
    # Was: read as the fnmatch class [20-29] ('2', '0-2', '9'), selecting all six hosts.
    with pytest.raises(PatternError) as err:
        ranged.select("host-[20-29]*")
    assert str(err.value) == (
        "pattern 'host-[20-29]*' matches no group or host (known groups: my_hosts, rack1, rack2)"
    )


def test_range_with_glob_selects_only_the_range(ranged: Inventory) -> None:
    # Was: all six hosts.
    assert names(ranged, "host-[10-12]*") == ["host-10", "host-11", "host-12"]


def test_exclusion_of_a_range_with_glob(ranged: Inventory) -> None:
    # Was: "matched no hosts".
    assert names(ranged, "my_hosts:!host-[14-15]*") == SIX[:4]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("host-[10-11,13]*", ["host-10", "host-11", "host-13"]),
        ("*-1[4-5]", ["host-14", "host-15"]),  # a leading glob; '*-1' alone names nothing
        ("host-[10-12]*:&host-1[1-5]", ["host-11", "host-12"]),
        ("rack[1-2]*", ["r1a", "r1b", "r2a"]),  # the globs rack1*, rack2* match groups
        ("r[1-2]?", ["r1a", "r1b", "r2a"]),
        ("my_hosts:!host-1[0-4]", ["host-15"]),
    ],
)
def test_ranges_with_or_without_globs_select_exactly_their_names(
    ranged: Inventory, pattern: str, expected: list[str]
) -> None:
    assert names(ranged, pattern) == expected


@pytest.mark.parametrize(
    "pattern", ["host-1[4-5]?", "my_hosts:!host-[10-14]?", "host-[10-12]?x*", "zz[1-3]*"]
)
def test_range_with_glob_whose_names_all_match_nothing(ranged: Inventory, pattern: str) -> None:
    # 'host-14?' needs one more character after 'host-14': no host has it.
    with pytest.raises(PatternError, match=r"matches no group or host \(known groups"):
        ranged.select(pattern)


@pytest.mark.parametrize(
    ("pattern", "as_list"),
    [
        ("host-[10-12]*", "host-10*,host-11*,host-12*"),
        ("host-1[0-1]", "host-10,host-11"),
        ("rack[1-2]*:!r[1]a", "rack1*,rack2*:!r1a"),
        ("my_hosts:!*-1[1-2]", "my_hosts:!*-11:!*-12"),
    ],
)
def test_range_term_means_what_its_expansion_as_a_list_means(
    ranged: Inventory, pattern: str, as_list: str
) -> None:
    assert names(ranged, pattern) == names(ranged, as_list)


def test_range_with_glob_partly_matching_names_what_is_missing(ranged: Inventory) -> None:
    with pytest.raises(PatternError) as err:
        ranged.select("host-[14-17]*")
    assert str(err.value).startswith(
        "pattern 'host-[14-17]*': host-[16-17]* match no group or host"
    )


def test_glob_character_class_is_a_bad_range_not_a_class(ranged: Inventory) -> None:
    with pytest.raises(PatternError, match="node ranges, not character classes"):
        ranged.select("host-1[ab]*")


def test_glob_range_against_many_names_is_refused_quickly() -> None:
    text = "groups:\n  big: {hosts: {'n[00001-10000]': {}}}\n"
    big = parse_inventory(text, "big.yaml")
    assert len(big.select("n0[1-2]00*")) == 20  # n01000..n01009, n02000..n02009
    assert len(big.select("n0[0001-4000]*")) == 4000  # a literal start: quick
    with pytest.raises(PatternError, match="too broad"):
        big.select("*[00001-10000]x*")


# Kind 2: an empty term is refused, whatever its place.


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("web::db", "two separators in a row"),
        ("web,,db", "two separators in a row"),
        ("web, ,db", "two separators in a row"),
        ("web:&prod::db", "two separators in a row"),
        ("web,", "ends with a separator"),
        ("web:&prod:", "ends with a separator"),
        (":web", "starts with a separator"),
        (",web", "starts with a separator"),
    ],
)
def test_empty_term_is_refused(inv: Inventory, pattern: str, fragment: str) -> None:
    # Was: 'web::db' selected web and db, the empty term silently dropped.
    with pytest.raises(PatternError) as err:
        inv.select(pattern)
    message = str(err.value)
    assert message.startswith(f"pattern {pattern!r} has an empty term") and fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(("pattern", "operator"), [("web:!", "!"), ("web:&", "&"), ("!", "!")])
def test_operator_with_nothing_after_it(inv: Inventory, pattern: str, operator: str) -> None:
    with pytest.raises(PatternError) as err:
        inv.select(pattern)
    assert str(err.value) == f"pattern {pattern!r} has {operator!r} with no name after it"


@pytest.mark.parametrize("pattern", ["web:!&db", "!!web", "&!web"])
def test_two_operators_are_refused(inv: Inventory, pattern: str) -> None:
    with pytest.raises(PatternError, match="two operators"):
        inv.select(pattern)


# Kind 3: 'group[N]' / 'group[N-M]' read as Ansible subscripts or node ranges: refused.


def test_subscript_shaped_range_on_a_group_is_ambiguous(inv: Inventory) -> None:
    # Was: read as host web1 only ("names unknown hosts: web1"); Ansible reads web's
    # second host.
    with pytest.raises(PatternError) as err:
        inv.select("web[1]")
    assert str(err.value) == (
        "pattern 'web[1]' is ambiguous: in Ansible it is a subscript, the host at position 1 "
        "of group 'web' (counting from 0), which fleet does not support; as a node range it "
        "means 'web1', which names no group or host"
    )


def test_subscript_shaped_range_of_a_group_shows_both_readings(inv: Inventory) -> None:
    # Was: db1 and db2, silently; Ansible's 'db[1-2]' is db's hosts 1 to 2: db2, db3.
    with pytest.raises(PatternError) as err:
        inv.select("prod:&db[1-2]")
    assert str(err.value) == (
        "pattern 'db[1-2]' (in 'prod:&db[1-2]') is ambiguous: in Ansible it is a subscript, "
        "the hosts at positions 1 to 2 of group 'db' (counting from 0), which fleet does not "
        "support; as a node range it means 'db1,db2': to select those, write 'db1,db2' or "
        "'db[1-2/1]'"
    )
    assert names(inv, "prod:&db[1-2/1]") == ["db1", "db2"]


@pytest.mark.parametrize(
    "pattern", ["web[01-03]", "web[0]", "!web[07]", "all[0]", "*[1]", "w*[1-2]", "web07[0]"]
)
def test_subscript_shapes_on_anything_that_selects_are_ambiguous(
    inv: Inventory, pattern: str
) -> None:
    with pytest.raises(PatternError, match="is ambiguous: in Ansible it is a subscript"):
        inv.select(pattern)


def test_ambiguous_single_name_says_how_to_write_the_host() -> None:
    inv = parse_inventory("groups: {node: {hosts: {'node[1-2]': {}}}}", "x")
    with pytest.raises(PatternError) as err:
        inv.select("node[1]")
    assert str(err.value).endswith(
        "the host at position 1 of group 'node' (counting from 0), which fleet does not support;"
        " as a node range it means 'node1': to select that, write 'node1'"
    )


def test_a_long_range_on_a_group_suggests_the_step_form() -> None:
    text = "groups:\n  n: {hosts: {'n[01-20]': {}}}\n"
    with pytest.raises(
        PatternError, match=r"20 names, n01 to n20: to select those, write 'n\[01-20/1\]'$"
    ):
        parse_inventory(text, "x").select("n[01-20]")


def test_empty_group_prefix_is_ambiguous_too() -> None:
    inv = parse_inventory("groups: {spare: null, web: {hosts: {spare1: {}}}}", "x")
    with pytest.raises(PatternError, match="is ambiguous"):
        inv.select("spare[1]")
    assert names(inv, "spare1") == ["spare1"]


@pytest.mark.parametrize(
    ("pattern", "positions"),
    [
        ("web[0:2]", "the hosts at positions 0 to 2 of group 'web' (counting from 0)"),
        ("web[1:]", "the hosts from position 1 of group 'web' (counting from 0) to the end"),
        ("web[2-]", "the hosts from position 2 of group 'web' (counting from 0) to the end"),
        ("web[-1]", "the host at position -1 of group 'web' (counting back from the end)"),
    ],
)
def test_ansible_subscripts_are_refused(inv: Inventory, pattern: str, positions: str) -> None:
    with pytest.raises(PatternError) as err:
        inv.select(pattern)
    assert str(err.value) == (
        f"pattern {pattern!r} is an Ansible subscript, {positions}: fleet does not support "
        "subscripts; name the hosts you mean (fleet hosts 'web' lists them)"
    )


def test_colon_range_on_a_name_that_selects_nothing_suggests_a_node_range(
    inv: Inventory,
) -> None:
    with pytest.raises(PatternError) as err:
        inv.select("db0[1:3]")
    assert str(err.value) == (
        "pattern 'db0[1:3]' is an Ansible subscript, which fleet does not support; "
        "for a node range write 'db0[1-3]'"
    )


def test_node_ranges_keep_working_where_the_prefix_names_nothing() -> None:
    inv = parse_inventory("groups: {app: {hosts: {'web[1-3]': {}, 'rack[1-2]-n[1-2]': {}}}}", "x")
    assert names(inv, "web[1-3]") == ["web1", "web2", "web3"]
    assert names(inv, "web[2]") == ["web2"]
    assert names(inv, "app:!web[1-2]") == ["web3", "rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]
    assert names(inv, "rack[1-2]-n[2]") == ["rack1-n2", "rack2-n2"]


# Kind 4: Ansible's regular expressions ('~') are refused, not misread.


@pytest.mark.parametrize(
    ("pattern", "term"),
    [
        ("~web0[1-3]", "~web0[1-3]"),
        ("~web.*", "~web.*"),
        ("web:!~db[12]", "~db[12]"),
        ("db:& ~db.*", "~db.*"),
        ("~(web|db){1,2}", "~(web|db){1"),  # split at the comma: still the regex message
    ],
)
def test_regular_expressions_are_not_supported(inv: Inventory, pattern: str, term: str) -> None:
    with pytest.raises(PatternError) as err:
        inv.select(pattern)
    message = str(err.value)
    assert f"pattern {term!r}" in message
    assert "regular expressions (~) are not supported" in message
