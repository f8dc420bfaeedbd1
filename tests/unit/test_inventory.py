"""Loading and validating inventory.yaml: format, precedence, schedules, every error, limits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.errors import InventoryError, InventoryProblem, PatternError
from fleet.inventory.loader import (
    MAX_DEPTH,
    MAX_HOST_VALUES,
    MAX_HOSTS,
    MAX_MEMBERSHIPS,
    Inventory,
    Schedule,
    load_inventory,
    parse_inventory,
)
from fleet.textsafe import show_value as show

#: Bound of the "refused quickly" checks: a hang guard, not a benchmark (walking the
#: refused files would take minutes; CI machines are slow and shared).
HANG_GUARD_S = 5.0

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["libyaml", "python"])
def both_parsers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test on libyaml's event parser and on PyYAML's pure-Python fallback."""
    import fleet.inventory.safe_yaml as module

    if request.param == "python":
        monkeypatch.setattr(module, "_LOADER", module._PyLoader)


def problems(text: str) -> list[str]:
    """Every problem line of loading `text` (which must fail)."""
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "inventory.yaml")
    lines = err.value.render().splitlines()
    assert all(line.startswith("inventory.yaml: ") for line in lines)
    assert len(lines) == len(err.value.problems)
    return [line.removeprefix("inventory.yaml: ") for line in lines]


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- the example file -------------------------------------------------------------------


def test_example_inventory_loads() -> None:
    inv = load_inventory(REPO / "inventory.yaml")
    assert {"local", "web", "db", "prod"} <= set(inv.groups)
    (local,) = inv.select("local")
    assert local.name == "localhost" and local.connection == "local"
    web = inv.select("web")
    assert len(web) >= 2 and all(h.queue == "dc-eu" for h in web)
    assert set(h.name for h in inv.select("prod")) == {h.name for h in inv.select("web,db")}
    assert inv.schedules and all(isinstance(s, Schedule) for s in inv.schedules.values())


# --- format and host values -------------------------------------------------------------

FULL = """
defaults: {user: deploy, port: 2200, colour: grey}
groups:
  web:
    hosts:
      web[01-02]: {port: 2222}
      web03:
        address: 10.0.0.3
        identity_file: ~/.ssh/web key
        password_env: WEB_PASSWORD
        jump: admin@bastion:22
        become: true
        become_user: root
        become_password_env: SUDO_PW
        env: {LANG: C.UTF-8}
        rack: r1
    vars: {user: www}
    queue: dc-eu
"""


def test_host_values() -> None:
    inv = parse_inventory(FULL, "inventory.yaml")
    web01, web02, web03 = inv.hosts
    assert (web01.name, web01.address, web01.port, web01.user) == ("web01", "web01", 2222, "www")
    assert web01.queue == "dc-eu" and web01.groups == ("web",)
    assert web01.vars == {"colour": "grey"}
    assert web03.address == "10.0.0.3" and web03.port == 2200
    assert web03.identity_file == "~/.ssh/web key" and web03.password_env == "WEB_PASSWORD"
    assert web03.jump == "admin@bastion:22" and web03.become and web03.become_user == "root"
    assert web03.become_password_env == "SUDO_PW" and dict(web03.env) == {"LANG": "C.UTF-8"}
    assert web03.vars == {"colour": "grey", "rack": "r1"}
    assert inv.groups == ("web",)
    assert inv.host("web02") == web02


def test_address_and_port_defaults() -> None:
    inv = parse_inventory("groups: {g: {hosts: {h1: null}}}", "x")
    (host,) = inv.hosts
    assert (host.address, host.port, host.user, host.connection) == ("h1", 22, None, "ssh")


def test_empty_file_and_null_sections() -> None:
    assert parse_inventory("", "x").hosts == ()
    inv = parse_inventory(
        "defaults:\ngroups:\n  g:\n  h: {hosts: null, vars: null}\nschedules:", "x"
    )
    assert inv.groups == ("g", "h") and inv.hosts == ()


def test_hosts_in_order_of_first_appearance() -> None:
    text = "groups: {gb: {hosts: {z: null, a: null}}, ga: {hosts: {m: null, z: null}}}"
    assert [h.name for h in parse_inventory(text, "x").hosts] == ["z", "a", "m"]


def test_host_lookup_of_unknown_name() -> None:
    with pytest.raises(PatternError, match="no host named 'nope'"):
        parse_inventory("groups: {g: {hosts: {h: null}}}", "x").host("nope")


def test_inventory_is_frozen() -> None:
    inv = parse_inventory("groups: {g: {hosts: {h: null}}}", "x")
    with pytest.raises(AttributeError):
        inv.hosts = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        inv.members["g"] = frozenset()  # type: ignore[index]


def test_host_round_trips_through_json_dict() -> None:
    from fleet.inventory.hosts import Host

    for host in parse_inventory(FULL, "x").hosts:
        assert Host.from_dict(host.to_dict()) == host


def test_ten_thousand_hosts_build_quickly() -> None:
    lines = ["groups:", "  big:", "    vars: {user: u}", "    hosts:"]
    lines += [f"      host{i}.example.com: {{port: {1000 + i % 100}}}" for i in range(10000)]
    start = time.perf_counter()
    inv = parse_inventory("\n".join(lines), "big.yaml")
    assert len(inv.select("big")) == 10000
    assert time.perf_counter() - start < 30  # a hang guard, not a benchmark


# --- precedence -------------------------------------------------------------------------

PRECEDENCE = """
defaults: {v: default, d: default, q: default}
groups:
  zeta:                       # depth 0, sorts after alpha
    vars: {v: zeta, z: zeta}
    children: [child]
  alpha:                      # depth 0
    vars: {v: alpha, a: alpha, z: alpha}
    children: [child]
  child:                      # depth 1: after both parents
    vars: {v: child}
    queue: child-queue
    hosts:
      h1: {v: host}
      h2: {}
  other:                      # depth 0, unrelated
    vars: {v: other, o: other}
    hosts:
      h2: {o: host-in-other}
"""


def test_precedence_defaults_groups_host() -> None:
    inv = parse_inventory(PRECEDENCE, "x")
    h1, _ = inv.hosts
    assert h1.vars["v"] == "host"  # host vars beat every group
    assert h1.vars["d"] == "default"  # defaults fill the rest
    assert h1.queue == "child-queue"


def test_child_group_beats_its_parents() -> None:
    h2 = parse_inventory(PRECEDENCE, "x").host("h2")
    assert h2.vars["v"] == "child"


def test_unrelated_groups_order_by_depth_then_name() -> None:
    h2 = parse_inventory(PRECEDENCE, "x").host("h2")
    # depth 0: alpha, other, zeta (by name), then depth 1: child
    assert h2.groups == ("alpha", "other", "zeta", "child")
    assert h2.vars["z"] == "zeta"  # zeta after alpha
    assert h2.vars["o"] == "host-in-other"  # host vars from another listing still win


def test_precedence_does_not_depend_on_file_order() -> None:
    a = "groups:\n  b: {vars: {v: b}, hosts: {h: null}}\n  a: {vars: {v: a}, hosts: {h: null}}\n"
    b = "groups:\n  a: {vars: {v: a}, hosts: {h: null}}\n  b: {vars: {v: b}, hosts: {h: null}}\n"
    assert parse_inventory(a, "x").host("h").vars["v"] == "b"
    assert parse_inventory(b, "x").host("h").vars["v"] == "b"


def test_host_listed_twice_gets_both_listings_in_group_order() -> None:
    text = "groups:\n  b: {hosts: {h: {port: 2}}}\n  a: {hosts: {h: {port: 1, user: a}}}\n"
    host = parse_inventory(text, "x").host("h")
    assert (host.port, host.user) == (2, "a")


def test_deep_parent_is_applied_before_shallow_unrelated_group() -> None:
    text = """
groups:
  top: {children: [mid], vars: {v: top}}
  mid: {children: [leaf], vars: {v: mid}}
  leaf: {hosts: {h: null}}
  side: {hosts: {h: null}, vars: {v: side}}
"""
    host = parse_inventory(text, "x").host("h")
    assert host.groups == ("side", "top", "mid", "leaf")
    assert host.vars["v"] == "mid"


def test_group_queue_is_a_group_var() -> None:
    text = """
defaults: {queue: default-q}
groups:
  web: {queue: dc-eu, hosts: {w1: null, w2: {queue: special}}}
  db: {hosts: {d1: null}}
"""
    inv = parse_inventory(text, "x")
    assert [h.queue for h in inv.hosts] == ["dc-eu", "special", "default-q"]


def test_env_mapping_is_replaced_whole() -> None:
    text = "groups: {g: {vars: {env: {A: '1'}}, hosts: {h: {env: {B: '2'}}}}}"
    assert dict(parse_inventory(text, "x").host("h").env) == {"B": "2"}


# --- schedules --------------------------------------------------------------------------


def test_schedules() -> None:
    text = """
groups: {web: {hosts: {w1: null}}}
schedules:
  a: {command: uptime, group: web, every: 30s}
  b: {command: "df -h", group: "web:&w*,w1", every: 5m, timeout: 20}
  c: {command: x, group: all, every: 1h, timeout: 1m}
  d: {command: x, group: web, every: 1d}
  e: {command: x, group: web, every: 45, timeout: 2.5}
  f: {command: x, group: web, every: 1h30m}
"""
    s = parse_inventory(text, "x").schedules
    assert list(s) == ["a", "b", "c", "d", "e", "f"]
    assert s["a"] == Schedule("a", "uptime", "web", every=30)
    assert (s["b"].every, s["b"].timeout) == (300, 20.0)
    assert (s["c"].every, s["c"].timeout) == (3600, 60.0)
    assert s["d"].every == 86400 and s["e"].every == 45 and s["e"].timeout == 2.5
    assert s["f"].every == 5400
    assert s["a"].to_dict() == {
        "name": "a", "command": "uptime", "group": "web", "every": 30, "cron": None,
        "timeout": None, "connect_timeout": None, "deadline": None, "sudo": False,
        "sudo_user": None, "env": {}, "overlap": "skip",
        "batch": None, "max_fail": None, "fanout": None, "batch_order": "inventory",
    }  # fmt: skip
    assert s["a"].when == "every 30s"


def test_schedule_cron_and_run_options() -> None:
    text = """
groups: {web: {hosts: {w1: null}}}
schedules:
  nightly:
    command: cleanup
    group: web
    cron: "30  2 * * 1-5"
    timeout: 10m
    connect_timeout: 5
    deadline: 1h
    sudo: true
    sudo_user: app
    env: {MODE: nightly}
    overlap: allow
"""
    s = parse_inventory(text, "x").schedules["nightly"]
    assert (s.cron, s.every, s.when) == ("30 2 * * 1-5", None, "cron 30 2 * * 1-5")
    assert (s.timeout, s.connect_timeout, s.deadline) == (600.0, 5.0, 3600.0)
    assert s.sudo and s.sudo_user == "app" and dict(s.env) == {"MODE": "nightly"}
    assert s.overlap == "allow"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{command: x, group: web, every: often}", "schedules.s.every: expected a duration"),
        ("{command: x, group: web, every: 0}", "schedules.s.every: expected a duration"),
        ("{command: x, group: web, every: true}", "schedules.s.every: expected a duration"),
        ("{command: x, group: web, every: -5}", "schedules.s.every: expected a duration"),
        ("{command: x, group: web, every: 1.5}", "schedules.s.every: expected a duration"),
        ("{command: x, group: web, every: 1m, timeout: soon}", "schedules.s.timeout: expected"),
        ("{command: '', group: web, every: 1m}", "schedules.s.command: expected a non-empty"),
        ("{command: [ls], group: web, every: 1m}", "schedules.s.command: expected a non-empty"),
        ("{group: web, every: 1m}", "schedules.s: missing key 'command'"),
        ("{command: x, every: 1m}", "schedules.s: missing key 'group'"),
        ("{command: x, group: web}", "schedules.s: expected one of 'every'"),
        ("{command: x, group: web, every: 1m, cron: '* * * * *'}", "schedules.s: expected one"),
        ("{command: x, group: web, cron: '* * *'}", "schedules.s.cron: expected five fields"),
        ("{command: x, group: web, cron: 5}", "schedules.s.cron: expected five fields"),
        ("{command: x, group: web, every: 1m, when: x}", "schedules.s.when: unknown key"),
        ("{command: x, group: web, every: 1m, overlap: queue}", "schedules.s.overlap: expected"),
        ("{command: x, group: web, every: 1m, deadline: x}", "schedules.s.deadline: expected"),
        ("{command: x, group: web, every: 1m, sudo: yes please}", "schedules.s.sudo: expected"),
        ("{command: x, group: web, every: 1m, env: {1A: x}}", "schedules.s.env: "),
        ("{command: x, group: web, every: 1m, sudo: true, become: false}", "schedules.s: sudo"),
        ("[uptime]", "schedules.s: expected a mapping with keys batch, batch_order, become"),
        ("{command: x, group: wbe, every: 1m}", "schedules.s.group: pattern 'wbe' matches no"),
        ("{command: x, group: 'web:&web2', every: 1m}", "schedules.s.group: pattern 'web2'"),
    ],
)
def test_schedule_problems(body: str, expected: str) -> None:
    groups = "groups: {web: {hosts: {w1: null}}, db: {hosts: {d1: null}}}"
    text = f"{groups}\nschedules:\n  s: {body}\n"
    assert one_problem(text).startswith(expected)


def test_schedules_not_a_mapping() -> None:
    assert one_problem("schedules: [a]").startswith("schedules: expected a mapping")


# --- validation: one problem each -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "groups: {web: {hosts: {web05: {port: abc}}}}",
            "groups.web.hosts.web05.port: expected an integer 1-65535, got 'abc'",
        ),
        ("groups: {web: {hosts: {h: {port: 0}}}}", "groups.web.hosts.h.port: expected an integer"),
        ("groups: {web: {hosts: {h: {port: 70000}}}}", "groups.web.hosts.h.port: expected an"),
        ("groups: {web: {hosts: {h: {port: true}}}}", "groups.web.hosts.h.port: expected an"),
        ("groups: {web: {hosts: {h: {port: 22.0}}}}", "groups.web.hosts.h.port: expected an"),
        (
            "groups: {web: {hosts: {h: {connection: ssj}}}}",
            "groups.web.hosts.h.connection: expected 'ssh' or 'local', got 'ssj'",
        ),
        ("groups: {w: {hosts: {h: {become: 'yes'}}}}", "groups.w.hosts.h.become: expected true"),
        ("groups: {w: {hosts: {h: {become: 1}}}}", "groups.w.hosts.h.become: expected true or"),
        ("defaults: {user: 'a b'}", "defaults.user: expected a string without spaces"),
        ("defaults: {user: no}", "defaults.user: expected a string without spaces"),
        ("defaults: {user: -oProxyCommand}", "defaults.user: expected a string without"),
        ("defaults: {address: ''}", "defaults.address: expected a string"),
        ("defaults: {jump: 5}", "defaults.jump: expected a string"),
        ("defaults: {queue: [a]}", "defaults.queue: expected a string"),
        ("defaults: {identity_file: ''}", "defaults.identity_file: expected a file path"),
        ("defaults: {become_user: null}", "defaults.become_user: expected a string"),
        ("defaults: {env: [A]}", "defaults.env: expected a mapping"),
        ("defaults: {env: {'A B': x}}", "defaults.env: 'A B' is not an environment variable"),
        ("defaults: {env: {PORT: 80}}", "defaults.env: PORT: expected a string"),
        ("defaults: {password_env: 'hunter 2'}", "defaults.password_env: expected the NAME"),
        ("defaults: {become_password_env: 3}", "defaults.become_password_env: expected the NAME"),
        ("defaults: {password: hunter2}", "defaults.password: no secrets in the inventory"),
        ("defaults: {when: 2024-01-01}", "defaults.when: expected a string, number"),
        ("defaults: {blob: !!binary aGVsbG8=}", "defaults.blob: expected a string, number"),
        ("defaults: {tags: !!set {a, b}}", "defaults.tags: expected a string, number"),
        ("defaults: {m: {1: x}}", "defaults.m: expected a string, number"),
        ("defaults: [user]", "defaults: expected a mapping of variables, got ['user']"),
        ("defaults: {1: x}", "defaults.1: variable names must be non-empty strings, got 1"),
        ("groups: [web]", "groups: expected a mapping of group names to groups"),
        ("groups: {web: [a, b]}", "groups.web: expected a mapping with keys children, hosts"),
        ("groups: {web: {hosts: [a, b]}}", "groups.web.hosts: expected a mapping of host names"),
        ("groups: {web: {vars: [a]}}", "groups.web.vars: expected a mapping of variables"),
        ("groups: {web: {children: web2}}", "groups.web.children: expected a list of group"),
        ("groups: {web: {children: [1]}}", "groups.web.children: expected a group name, got 1"),
        ("groups: {web: {queue: 'a b'}}", "groups.web.queue: expected a string without spaces"),
        ("groups: {a: {children: [b, b]}, b: {}}", "groups.a.children: group 'b' listed twice"),
        (
            "groups: {web: {queue: q, vars: {queue: r}}}",
            "groups.web.queue: queue is set both here and in vars",
        ),
        ("[1, 2]", "expected a mapping with keys defaults, groups, schedules, got [1, 2]"),
        ("just text", "expected a mapping with keys defaults, groups, schedules, got 'just text'"),
        ("groups: {web: {hosts: {123: null}}}", "groups.web.hosts.123: host names must be strings"),
    ],
)
def test_single_problem(text: str, expected: str) -> None:
    assert one_problem(text).startswith(expected)


def test_unknown_keys_at_every_level_name_the_allowed_ones() -> None:
    text = """
defualts: {}
groups:
  web:
    host: {}
    hosts: {w1: null}
schedules:
  s: {command: x, group: web, every: 1m, evry: 2m}
"""
    assert problems(text) == [
        "defualts: unknown key 'defualts' (allowed: defaults, groups, schedules)",
        "groups.web.host: unknown key 'host' (allowed: children, hosts, queue, vars)",
        "schedules.s.evry: unknown key 'evry' (allowed: batch, batch_order, become, command, "
        "connect_timeout, cron, deadline, env, every, fanout, group, max_fail, overlap, sudo, "
        "sudo_user, timeout)",
    ]


def test_unknown_host_var_is_a_free_var_not_an_error() -> None:
    host = parse_inventory("groups: {w: {hosts: {h: {colour: red, n: [1, {a: 2}]}}}}", "x").hosts[0]
    assert dict(host.vars) == {"colour": "red", "n": [1, {"a": 2}]}


def test_cycle() -> None:
    text = "groups:\n  a: {children: [b]}\n  b: {children: [a]}\n"
    assert problems(text) == ["groups.a.children: cycle a -> b -> a"]


def test_longer_cycle_and_self_cycle() -> None:
    text = (
        "groups:\n  top: {children: [a]}\n  a: {children: [b]}\n  b: {children: [c]}\n"
        "  c: {children: [a]}\n  s: {children: [s]}\n"
    )
    assert problems(text) == [
        "groups.a.children: cycle a -> b -> c -> a",
        "groups.s.children: cycle s -> s",
    ]


def test_unknown_child_group() -> None:
    text = "groups:\n  web: {}\n  db: {}\n  prod: {children: [web, wbe]}\n"
    assert problems(text) == ["groups.prod.children: unknown group 'wbe' (known: db, prod, web)"]


@pytest.mark.usefixtures("both_parsers")
def test_duplicate_mapping_keys() -> None:
    text = "groups:\n  web:\n    hosts:\n      w1: {}\n      w1: {port: 2}\n  web:\n    hosts: {}\n"
    assert problems(text) == [
        "groups: duplicate key 'web' (lines 2 and 6)",
        "groups.web.hosts: duplicate key 'w1' (lines 4 and 5)",
    ]


@pytest.mark.usefixtures("both_parsers")
def test_duplicate_keys_in_flow_mappings_and_defaults() -> None:
    assert one_problem("defaults: {user: a, port: 1, user: b}") == (
        "defaults: duplicate key 'user' (lines 1 and 1)"
    )


@pytest.mark.usefixtures("both_parsers")
def test_keys_equal_in_python_but_not_in_yaml_are_not_duplicates() -> None:
    # 1 == True == 1.0 in Python; YAML resolves int, bool and float: three keys.
    assert parse_inventory("defaults: {m: {a: 1, b: 2}}", "x").hosts == ()
    text = "groups: {web: {hosts: {h: {m: {1: a, true: b}}}}}"
    found = one_problem(text)
    assert "duplicate" not in found and found.startswith("groups.web.hosts.h.m: expected")
    assert one_problem("defaults: {1: x, true: y, 1.0: z}").startswith("defaults.1: variable")


@pytest.mark.usefixtures("both_parsers")
def test_same_value_spelled_twice_is_a_duplicate() -> None:
    found = problems("defaults: {1: x, 0x1: y}")
    assert "defaults: duplicate key 1 (lines 1 and 1)" in found


@pytest.mark.usefixtures("both_parsers")
def test_merge_keys_may_be_overridden() -> None:
    text = """
defaults: &base {user: a, port: 2}
groups:
  g:
    vars:
      <<: *base
      user: b
    hosts: {h: null}
"""
    host = parse_inventory(text, "x").host("h")
    assert (host.user, host.port) == ("b", 2)


def test_duplicate_hosts_after_range_expansion() -> None:
    text = (
        "groups:\n  web:\n    hosts:\n      web[01-04]: {}\n      web03: {}\n      web[04-05]: {}\n"
    )
    assert problems(text) == [
        "groups.web.hosts: host web03 listed twice ('web[01-04]' and 'web03')",
        "groups.web.hosts: host web04 listed twice ('web[01-04]' and 'web[04-05]')",
    ]


def test_same_host_in_two_groups_is_fine() -> None:
    text = "groups: {a: {hosts: {'h[1-2]': null}}, b: {hosts: {h2: null}}}"
    assert parse_inventory(text, "x").host("h2").groups == ("a", "b")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("'-oProxyCommand=x'", "starts with '-'"),
        ("'web 01'", "whitespace"),
        ('"web\\x01"', "control character"),
        ('"web\\t1"', "whitespace"),
        ("''", "empty"),
        ("'web[01-'", "range"),
        ("'web,db'", "reserve"),
        ("'" + "w" * 256 + "'", "longer than 255 characters"),
    ],
)
def test_invalid_host_names(name: str, fragment: str) -> None:
    found = one_problem(f"groups:\n  web:\n    hosts:\n      {name}: {{}}\n")
    assert found.startswith("groups.web.hosts.") and fragment in found


def test_control_characters_are_escaped_in_messages() -> None:
    found = one_problem('groups:\n  web:\n    hosts:\n      "a\\x1b[31mb": {}\n')
    assert "\x1b" not in found and "\\x1b" in found


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("all", "'all' is reserved"),
        ("'web db'", "whitespace"),
        ("'web:x'", "reserve"),
        ("''", "empty"),
    ],
)
def test_invalid_group_names(name: str, fragment: str) -> None:
    found = one_problem(f"groups:\n  {name}: {{hosts: {{h: null}}}}\n")
    assert found.startswith("groups.") and fragment in found


def test_group_and_host_with_one_name() -> None:
    found = one_problem("groups: {web: {hosts: {db: null}}, db: {hosts: {d: null}}}")
    assert found == "groups.db: 'db' names both a group and a host"


def test_every_problem_is_reported_at_once() -> None:
    text = """
groups:
  web:
    hosts:
      web05: {port: abc}
      web06: {connection: telnet}
      web[07-08]: {become: maybe}
    children: [wbe]
    extra: 1
  a: {children: [b]}
  b: {children: [a]}
  all: {}
"""
    found = problems(text)
    assert found == [
        "groups.web.extra: unknown key 'extra' (allowed: children, hosts, queue, vars)",
        "groups.web.hosts.web05.port: expected an integer 1-65535, got 'abc'",
        "groups.web.hosts.web06.connection: expected 'ssh' or 'local', got 'telnet'",
        "groups.web.hosts.web[07-08].become: expected true or false, got 'maybe'",
        "groups.all: 'all' is reserved: it means every host (shared vars: defaults)",
        "groups.web.children: unknown group 'wbe' (known: a, b, web)",
        "groups.a.children: cycle a -> b -> a",
    ]


def test_error_carries_file_and_problems() -> None:
    with pytest.raises(InventoryError) as err:
        parse_inventory("defaults: {port: x}", "site.yaml")
    assert err.value.file == "site.yaml"
    assert err.value.problems == (
        InventoryProblem("defaults.port", "expected an integer 1-65535, got 'x'"),
    )
    assert err.value.key_path == "defaults.port"
    assert str(err.value) == "site.yaml: defaults.port: expected an integer 1-65535, got 'x'"


def test_long_values_are_truncated() -> None:
    found = one_problem(f"defaults: {{port: '{'x' * 500}'}}")
    assert len(found) < 130 and "..." in found


def test_show() -> None:
    assert show("a\nb") == "'a\\nb'"
    assert len(show("y" * 1000)) <= 60
    assert len(show(list(range(1000)))) <= 60


# --- YAML: syntax, tags, limits ---------------------------------------------------------


@pytest.mark.usefixtures("both_parsers")
def test_yaml_syntax_error_is_one_line_with_its_place() -> None:
    found = one_problem("groups:\n  web: {hosts: [a\n  db: x: y\n")
    assert found.startswith("line ") and "\n" not in found


@pytest.mark.usefixtures("both_parsers")
def test_yaml_syntax_error_line_number() -> None:
    assert one_problem("groups:\n  web:\n    hosts: {a: b\n").startswith("line 4, column 1: ")


@pytest.mark.usefixtures("both_parsers")
def test_control_character_in_yaml_is_a_problem() -> None:
    assert one_problem('defaults: {x: y}\ngroups: {"\x1b": {}}') == (
        "line 2: character 0x001b is not allowed in YAML"
    )


@pytest.mark.usefixtures("both_parsers")
@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch /tmp/pwned-fleet']",
        "!!python/object:builtins.object {}",
        "!!python/name:os.system",
        "!custom x",
    ],
)
def test_unsafe_tags_are_refused_not_executed(tag: str) -> None:
    found = one_problem(f"defaults:\n  x: {tag}\n")
    assert found.startswith("line 2") and "constructor" in found
    assert not Path("/tmp/pwned-fleet").exists()


@pytest.mark.usefixtures("both_parsers")
def test_billion_laughs_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("defaults: {lol: *a9}")
    start = time.perf_counter()
    found = problems("\n".join(lines))
    assert time.perf_counter() - start < HANG_GUARD_S
    assert any("aliases expand to more than" in p for p in found)


@pytest.mark.usefixtures("both_parsers")
def test_recursive_alias_is_refused() -> None:
    found = one_problem("defaults: &a {x: *a}\n")
    assert "refers to its own parent" in found or "alias" in found


@pytest.mark.usefixtures("both_parsers")
# Below, between and beyond the parsers' own limits (libyaml's is about 1000 levels).
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5_000, 100_000])
def test_deep_nesting_is_refused_quickly(depth: int) -> None:
    start = time.perf_counter()
    found = one_problem("defaults: {x: " + "[" * depth + "]" * depth + "}")
    assert time.perf_counter() - start < HANG_GUARD_S
    assert f"nested deeper than {MAX_DEPTH} levels" in found


@pytest.mark.usefixtures("both_parsers")
def test_deep_nesting_through_aliases_is_refused() -> None:
    lines = ["a0: &a0 [[[[[[[[[[x]]]]]]]]]]"]
    lines += [f"a{i}: &a{i} [[[[[[[[[[*a{i - 1}]]]]]]]]]]" for i in range(1, 40)]
    found = one_problem("\n".join(lines) + "\ndefaults: {x: *a39}\n")
    assert "through aliases" in found


@pytest.mark.usefixtures("both_parsers")
def test_giant_integer_is_a_problem_not_a_crash() -> None:
    found = problems("defaults: {port: " + "9" * 10000 + "}")
    assert len(found) == 1 and "cannot parse YAML" in found[0]


# --- size limits: counted before anything is expanded -----------------------------------


def refused_quickly(text: str) -> str:
    start = time.perf_counter()
    found = one_problem(text)
    # A hang guard, generous for a loaded CI machine: walking these files takes minutes.
    assert time.perf_counter() - start < HANG_GUARD_S, found
    return found


def test_one_huge_range_names_its_key_and_count() -> None:
    found = refused_quickly("groups:\n  web:\n    hosts:\n      'x[1-99999999]': {}\n")
    assert found == (
        f"groups.web.hosts: 'x[1-99999999]' expands to 99999999 hosts (limit {MAX_HOSTS})"
    )


def test_astronomic_range_is_counted_not_built() -> None:
    key = "x" + "[1-" + "9" * 60 + "]" * 1 + "y[1-" + "9" * 60 + "]"
    found = refused_quickly(f"groups: {{web: {{hosts: {{'{key}': {{}}}}}}}}")
    assert "expands to more than 1000000000000000000 hosts" in found


def test_fifty_ranges_under_the_range_limit_are_refused_together() -> None:
    keys = ", ".join(f"'r{i}x[1-99999]': {{}}" for i in range(50))
    found = refused_quickly("groups:\n  g:\n    hosts: {" + keys + "}\n")
    assert found == (
        f"groups.g.hosts: lists 4999950 hosts once ranges are expanded, "
        f"4999950 in the whole file (limit {MAX_HOSTS})"
    )


def test_hosts_are_counted_across_groups_and_aliases() -> None:
    text = "groups:\n  g0: {hosts: &h {'n[1-60000]': {}}}\n  g1: {hosts: *h}\n"
    found = refused_quickly(text)
    assert found.startswith("groups.g0.hosts: lists 60000 hosts") and "120000 in the whole" in found


def test_many_parents_of_a_big_group_are_refused() -> None:
    text = "groups:\n  big:\n    hosts: {'h[1-50000]': {}}\n"
    text += "".join(f"  p{i}: {{children: [big]}}\n" for i in range(200))
    found = refused_quickly(text)
    assert found == (
        "groups.big.hosts: its 50000 hosts are each in 201 groups (with the parents through "
        f"children): 10050000 host-group memberships in the file (limit {MAX_MEMBERSHIPS})"
    )


def test_long_chain_of_children_is_refused() -> None:
    text = "groups:\n" + "".join(f"  g{i}: {{children: [g{i + 1}]}}\n" for i in range(3000))
    found = refused_quickly(text + "  g3000: {hosts: {h: {}}}\n")
    assert "children nest too deep or too wide" in found and found.startswith("groups.g")


def test_variables_multiplied_by_hosts_are_refused() -> None:
    many = ", ".join(f"v{i}: 1" for i in range(100))
    text = f"defaults: {{{many}}}\ngroups: {{g: {{hosts: {{'h[1-60000]': {{}}}}}}}}\n"
    found = refused_quickly(text)
    assert found == (
        "hosts would carry 6000000 variables in all once defaults and group vars are "
        f"applied (limit {MAX_HOST_VALUES})"
    )


def test_largest_allowed_inventory_loads() -> None:
    text = "groups:\n  a: {hosts: {'n[1-50000]': {}}}\n  b: {hosts: {'m[1-50000]': {}}}\n"
    text += "  top: {children: [a, b]}\n"
    assert len(parse_inventory(text, "x").select("top")) == MAX_HOSTS


def test_ten_thousand_hosts_in_fifty_groups_with_parents_build_quickly() -> None:
    lines = ["groups:"]
    for g in range(50):
        lines += [f"  g{g}:", f"    vars: {{v{g}: {g}, user: u{g}}}", "    hosts:"]
        lines += [f"      host{g}-{i}.example.com: {{port: {1000 + i}}}" for i in range(200)]
    for k in range(10):
        children = ", ".join(f"g{g}" for g in range(k * 5, k * 5 + 5))
        lines += [f"  parent{k}:", f"    vars: {{p: {k}}}", f"    children: [{children}]"]
    lines += ["  top:", f"    children: [{', '.join(f'parent{k}' for k in range(10))}]"]
    start = time.perf_counter()
    inv = parse_inventory("\n".join(lines), "big.yaml")
    assert len(inv.select("top")) == 10000
    assert inv.host("host7-3.example.com").groups == ("top", "parent1", "g7")
    assert time.perf_counter() - start < 30  # a hang guard, not a benchmark


# --- files ------------------------------------------------------------------------------


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    assert str(err.value) == (
        f"{path}: no such file (name the inventory with -i PATH or FLEET_INVENTORY)"
    )


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="cannot read"):
        load_inventory(tmp_path)


def test_load_refuses_huge_file_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(17 << 20)  # sparse: cheap to make
    start = time.perf_counter()
    with pytest.raises(InventoryError, match="larger than 16 MiB"):
        load_inventory(path)
    assert time.perf_counter() - start < HANG_GUARD_S


def test_load_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"defaults: {user: \xe9}\n")
    with pytest.raises(InventoryError, match="not UTF-8"):
        load_inventory(path)


def test_load_str_path(tmp_path: Path) -> None:
    path = tmp_path / "i.yaml"
    path.write_text("groups: {g: {hosts: {h: null}}}\n")
    inv = load_inventory(str(path))
    assert isinstance(inv, Inventory) and inv.source == str(path)
