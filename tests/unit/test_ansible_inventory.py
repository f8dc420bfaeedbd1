"""Ansible inventories (INI and YAML) as they are (issue 11 point 7): every construct,
every problem with its line or key path, and the hosts compared with what
``ansible-inventory --list`` printed for the same files (tests/data/ansible/*.json,
generated once with ansible-core 2.19 in a throwaway venv; Ansible is not imported)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleet.cli import main
from fleet.errors import InventoryError, PatternError
from fleet.inventory.ansible_model import expand_pattern, split_port
from fleet.inventory.ansible_vars import parse_ini_value
from fleet.inventory.formats import Format
from fleet.inventory.loader import IMPLICIT_LOCALHOST, Inventory, parse_inventory, select_hosts

DATA = Path(__file__).resolve().parents[1] / "data" / "ansible"
FIXTURES = ["site.ini", "site.yaml", "hosts", "toplevel.yml"]

# What ansible's ssh connection plugin reads each Host field from (later names win)
_FIELDS = {
    "address": ("ansible_host", "ansible_ssh_host"),
    "port": ("ansible_port", "ansible_ssh_port"),
    "user": ("ansible_user", "ansible_ssh_user"),
    "identity_file": ("ansible_private_key_file", "ansible_ssh_private_key_file"),
    "become_user": ("ansible_become_user",),
}
_MAPPED = {name for names in _FIELDS.values() for name in names} | {
    "ansible_connection",
    "ansible_become",
}


def _members(listing: dict[str, Any], group: str) -> set[str]:
    entry = listing.get(group, {})
    found = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        found |= _members(listing, child)
    return found


def expected_from_ansible(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """fleet's `hosts --json` fields for each host of an ``ansible-inventory --list``."""
    hostvars = listing["_meta"]["hostvars"]
    groups = [g for g in listing if g not in ("_meta", "all")]
    expected = {}
    for name in sorted(_members(listing, "all")):
        hv = hostvars.get(name, {})
        row: dict[str, Any] = {"address": name, "port": 22, "user": None,
                               "identity_file": None, "become_user": None}  # fmt: skip
        for field, names in _FIELDS.items():
            for var in names:
                if hv.get(var) is not None:
                    row[field] = hv[var]
        row["port"] = int(row["port"])
        row["connection"] = "local" if hv.get("ansible_connection") == "local" else "ssh"
        become = hv.get("ansible_become", False)
        row["become"] = become if isinstance(become, bool) else str(become).lower() in (
            "yes", "true", "1", "on", "y", "t")  # fmt: skip
        row["groups"] = sorted(g for g in groups if name in _members(listing, g))
        row["vars"] = {k: v for k, v in hv.items() if k not in _MAPPED}
        expected[name] = row
    return expected


def fleet_hosts_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["-i", str(path), "hosts", "all", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    return {
        h["name"]: {k: sorted(v) if k == "groups" else v for k, v in h.items() if k != "name"}
        for h in doc
    }


@pytest.mark.parametrize("name", FIXTURES)
def test_hosts_json_matches_ansible_inventory_list(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = json.loads((DATA / f"{name}.ansible.json").read_text())
    expected = expected_from_ansible(listing)
    got = fleet_hosts_json(DATA / name, capsys)
    assert set(got) == set(expected)
    for host, row in expected.items():
        assert {k: got[host][k] for k in row} == row, host


@pytest.mark.parametrize(
    ("name", "kind"),
    [("site.ini", Format.ANSIBLE_INI), ("site.yaml", Format.ANSIBLE_YAML),
     ("hosts", Format.ANSIBLE_INI), ("toplevel.yml", Format.ANSIBLE_YAML)],
)  # fmt: skip
def test_format_by_extension_and_shape(name: str, kind: Format) -> None:
    from fleet.inventory.loader import load_inventory

    assert load_inventory(DATA / name).format is kind


def ini(text: str, source: str = "hosts.ini") -> Inventory:
    return parse_inventory(text, source)


def problems(text: str, source: str = "hosts.ini") -> list[str]:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, source)
    assert caught.value.file == source
    return [str(p) for p in caught.value.problems]


def test_format_detection_without_extension() -> None:
    assert parse_inventory("web1\nweb2 ansible_port=2201\n", "hosts").format is Format.ANSIBLE_INI
    assert parse_inventory("[web]\nw1\n", "inventory").format is Format.ANSIBLE_INI
    assert parse_inventory("groups: {g: {hosts: {h: {}}}}", "x").format is Format.FLEET
    assert parse_inventory("all: {hosts: {h: }}", "x").format is Format.ANSIBLE_YAML
    assert parse_inventory("", "x").format is Format.FLEET
    # a YAML error in a file that is no INI either stays a YAML error
    assert any("line" in p for p in problems("groups: {g: [\n", "x"))


def test_ini_ranges_ports_comments_and_ungrouped() -> None:
    inv = ini(
        "# comment\n; comment too\nsolo:2201\n"
        "[web]\nweb[01:03] # trailing comment\nweb[8:12:2].ex\n"
        "[db]\ndb-[a:c]\n[db:children]\n"
    )
    assert [h.name for h in inv.select("web")] == [
        "web01", "web02", "web03", "web8.ex", "web10.ex", "web12.ex"]  # fmt: skip
    assert [h.name for h in inv.select("db")] == ["db-a", "db-b", "db-c"]
    (solo,) = inv.select("ungrouped")
    assert (solo.name, solo.port, solo.groups) == ("solo", 2201, ("ungrouped",))


def test_ini_value_types_follow_ansible() -> None:
    inv = ini(
        "[g]\nh n=5 b=True s='05' l=\"[1, 'a']\" w=\"two words\" t=(1,2) by=\"b'x'\" c=1j\n"
        "[g:vars]\nv = 23\nf = FALSE\ne = True # note\nx = foo # note\nempty =\n"
    )
    v = inv.host("h").vars
    assert (v["n"], v["b"], v["s"], v["l"], v["w"]) == (5, True, "05", [1, "a"], "two words")
    assert (v["t"], v["by"], v["c"]) == ([1, 2], "x", "1j")
    assert (v["v"], v["f"], v["e"], v["x"], v["empty"]) == (23, "FALSE", True, "foo # note", "")
    assert parse_ini_value("{'a': [1, {2}]}") == {"a": [1, [2]]}
    deep = "[" * 100_000 + "]" * 100_000  # Python cannot parse it: text, as for Ansible
    assert parse_ini_value(deep) == deep


def test_connection_variables_map_onto_host_fields() -> None:
    inv = ini(
        "h1 ansible_host=10.0.0.1 ansible_port=2222 ansible_user=ops "
        "ansible_ssh_private_key_file=~/.ssh/k ansible_become=yes ansible_become_user=pg\n"
        "h2 ansible_host=a ansible_ssh_host=b ansible_port='2200' ansible_connection=smart\n"
        "localhost ansible_connection=local\n"
    )
    h1, h2, local = inv.hosts
    assert (h1.address, h1.port, h1.user, h1.identity_file) == ("10.0.0.1", 2222, "ops", "~/.ssh/k")
    assert (h1.become, h1.become_user, h1.vars) == (True, "pg", {})
    assert h1.explicit == frozenset(
        {"address", "port", "user", "identity_file", "become", "become_user"}
    )
    assert (h2.address, h2.port, h2.connection) == ("b", 2200, "ssh")  # ssh_host wins
    assert local.is_local


def test_precedence_host_over_child_over_parent_over_all() -> None:
    inv = ini(
        "[web]\nw1 v=host\nw2\n[web:vars]\nv=web\nonly=web\n"
        "[eu:children]\nweb\n[eu:vars]\nv=eu\nonly=eu\nmid=eu\n"
        "[all:vars]\nv=all\nbase=all\n"
        "[db]\nw1 v=later\n"  # a host listed twice: its own vars merge, the later wins
    )
    w1, w2 = inv.host("w1"), inv.host("w2")
    assert (w1.vars["v"], w2.vars["v"]) == ("later", "web")
    assert (w2.vars["only"], w2.vars["mid"], w2.vars["base"]) == ("web", "eu", "all")
    assert set(w1.groups) == {"web", "eu", "db"}


def test_children_may_come_before_their_section() -> None:
    inv = ini("[prod:children]\nweb\n[web]\nw1\n")
    assert [h.name for h in inv.select("prod")] == ["w1"]


def test_patterns_work_over_ansible_hosts() -> None:
    inv = parse_inventory((DATA / "site.ini").read_text(), "site.ini")
    assert {h.name for h in inv.select("web:&eu:!web0[1-3].example.com")} == {
        "web04.example.com", "web05.example.com", "web06.example.com"}  # fmt: skip
    assert {h.name for h in inv.select("ungrouped")} == {"bastion", "lonely"}
    assert [h.name for h in inv.select("local")] == ["localhost"]


def test_every_ini_problem_with_its_line() -> None:
    found = problems(
        "[web]\n"  # 1
        "w1 ansible_port=abc\n"  # 2
        "w2 ansible_ssh_common_args='-o ProxyJump=b'\n"  # 3
        "w3 ansible_connection=winrm\n"  # 4
        "w4 ansible_password=hunter2\n"  # 5
        "w5 ansible_host=\"{{ lookup('x') }}\"\n"  # 6
        "w6 novalue\n"  # 7
        "w7 'unbalanced\n"  # 8
        "w[1:x]\n"  # 9
        "w8:\n"  # 10
        "[web:bogus]\n"  # 11
        "[bad header\n"  # 12
        "[web:children]\n"  # 13
        "nowhere\n"  # 14
        "[ghost:vars]\n"  # 15
        "a=1\n"  # 16
        "[web:vars]\n"  # 17
        "ansible_become=maybe\n"  # 18
        "justakey\n"  # 19
    )
    expect = [
        ("line 2: web.hosts.w1.ansible_port", "expected an integer 1-65535, got 'abc'"),
        ("line 3: web.hosts.w2.ansible_ssh_common_args", "not supported"),
        ("line 4: web.hosts.w3.ansible_connection", "'winrm' is not supported"),
        ("line 5: web.hosts.w4.ansible_password", "no secrets"),
        ("line 6: web.hosts.w5.ansible_host", "Ansible template"),
        ("line 7: web.hosts.w6", "expected key=value"),
        ("line 8", "cannot split host line"),
        ("line 9: web.hosts.w[1:x]", "bad host range"),
        ("line 10: web.hosts.w8:", "cannot end with ':'"),
        ("line 11", "unknown type 'bogus'"),
        ("line 12", "invalid section header"),
        ("line 14", "group 'nowhere' is used but has no [nowhere]"),
        ("line 15", "group 'ghost' is used but has no [ghost]"),
        ("line 18: web.vars.ansible_become", "expected a boolean"),
        ("line 19: web.vars.justakey", "expected key=value"),
    ]
    assert len(found) == len(expect), found
    for (where, what), line in zip(expect, sorted(found, key=_line_number), strict=True):
        assert line.startswith(where + ":") and what in line, (where, what, line)


def _line_number(problem: str) -> int:
    return int(problem.split(":")[0].split()[1])


def test_cycles_and_odd_children_are_refused() -> None:
    found = problems("[a:children]\nb\n[b:children]\na\n[c:children]\nc\nall\n")
    assert any("cycle a -> b -> a" in p or "cycle b -> a -> b" in p for p in found), found
    assert any(p.startswith("line 6") and "its own child" in p for p in found), found
    assert any(p.startswith("line 7") and "'all' cannot be a child" in p for p in found)


def test_ranges_are_counted_before_they_are_expanded() -> None:
    assert "more than" in problems("[g]\nh[0:99999999]\n")[0]
    assert expand_pattern("r[1:2]-n[a:b]") == ["r1-na", "r1-nb", "r2-na", "r2-nb"]
    with pytest.raises(ValueError, match="equal-length"):
        expand_pattern("w[01:100]")
    assert split_port("web[01:02]:2222") == ("web[01:02]", 2222)
    assert split_port("bad-:22") == ("bad-:22", None)  # not a host name: no port split


def test_every_ansible_yaml_problem_with_its_key_path() -> None:
    text = (
        "all:\n"
        "  hosts:\n"
        "    ok1:\n"
        "    bad1: {ansible_port: 70000}\n"
        "    bad2: [not, a, mapping]\n"
        "    3: {}\n"
        "  children:\n"
        "    web:\n"
        "      hostz: {w1: }\n"
        "      vars: [1]\n"
        "    db: 5\n"
        "    proxy:\n"
        "      hosts: {p1: {ansible_ssh_extra_args: -v, ansible_become_method: su}}\n"
    )
    found = problems(text, "inventory.yml")
    expect = [
        ("all.hosts.bad1.ansible_port", "expected an integer 1-65535"),
        ("all.hosts.bad2", "expected a mapping of variables"),
        ("all.hosts.3", "host names must be strings"),
        ("all.children.web.hostz", "unknown key 'hostz'"),
        ("all.children.web.vars", "expected a mapping"),
        ("all.children.db", "expected a group"),
        ("all.children.proxy.hosts.p1.ansible_ssh_extra_args", "not supported"),
        ("all.children.proxy.hosts.p1.ansible_become_method", "fleet uses sudo"),
    ]
    assert len(found) == len(expect), found
    for (where, what), line in zip(expect, found, strict=True):
        assert line.startswith(where + ":") and what in line, (where, what, line)


def test_yaml_strings_for_sections_and_group_reuse() -> None:
    inv = parse_inventory(
        "all:\n  children:\n    web: {hosts: w1, vars: {a: 1}}\n"
        "    prod: {children: {web: {hosts: {w2: }, vars: {b: 2}}}}\n",
        "inv.yaml",
    )
    assert [h.name for h in inv.select("prod")] == ["w1", "w2"]
    assert dict(inv.host("w1").vars) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("key", "meant"),
    [("host", "address"), ("hostname", "address"), ("ansible_host", "address"),
     ("ip", "address"), ("ansible_port", "port"), ("ansible_user", "user")],
)  # fmt: skip
def test_fleet_format_names_the_key_another_tool_uses(key: str, meant: str) -> None:
    found = problems(f"groups: {{web: {{hosts: {{w1: {{{key}: x}}}}}}}}", "inventory.yaml")
    assert found == [f"groups.web.hosts.w1.{key}: {key!r} is not a fleet variable: "
                     f"did you mean {meant}?"]  # fmt: skip


def test_implicit_localhost(tmp_path: Path) -> None:
    inv = parse_inventory("groups: {web: {hosts: {w1: {}}}}", "inventory.yaml")
    assert inv.select("localhost") == (IMPLICIT_LOCALHOST,)
    assert IMPLICIT_LOCALHOST.is_local
    with pytest.raises(PatternError):
        inv.select("localhost,w1")  # only the exact pattern: never widens another
    own = parse_inventory("groups: {l: {hosts: {localhost: {port: 2200}}}}", "inventory.yaml")
    assert own.select("localhost")[0].port == 2200  # the inventory's own wins
    missing = tmp_path / "inventory.yaml"
    assert select_hosts(missing, "localhost", implicit_file=True) == (IMPLICIT_LOCALHOST,)
    with pytest.raises(InventoryError, match=r"-i PATH or FLEET_INVENTORY.*'localhost'"):
        select_hosts(missing, "local", implicit_file=True)
    with pytest.raises(InventoryError, match="no such file"):
        select_hosts(missing, "localhost")  # a file the user named must exist
