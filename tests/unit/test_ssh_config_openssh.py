"""ssh_config read the way OpenSSH reads it (issue 11, point 2).

The configuration comes from ``ssh -G`` (a local subprocess that contacts nothing), so
these tests need the OpenSSH client; without it they are skipped, and the paramiko
fallback is tested on its own at the end. Each case is one that paramiko's parser got
wrong: Include, ``Match host=b``, comments after values, %-tokens, ``Host web[12]``,
the first obtained value winning, and the inventory's values winning.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
from pathlib import Path

import pytest

from fleet.inventory.hosts import Host
from fleet.inventory.loader import parse_inventory
from fleet.results import Status
from fleet.ssh import config_entry, ssh_g
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.sshconfig import Target, lookup, resolve_target

needs_ssh = pytest.mark.skipif(
    shutil.which("ssh") is None, reason="OpenSSH client (ssh) not installed"
)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    ssh_g.reset_cache()
    config_entry._warned.clear()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return str(path)


def implicit(name: str, **kw: object) -> Host:
    """An inventory host that set nothing but what `kw` names (as the loader makes it)."""
    values: dict[str, object] = {"address": name, **kw}
    return Host(name=name, explicit=frozenset(kw), **values)  # type: ignore[arg-type]


def target(tmp_path: Path, text: str, host: Host) -> Target:
    return resolve_target(host, write(tmp_path, text))


# --- the failing cases of the issue ------------------------------------------------


@needs_ssh
def test_include_of_a_conf_d_glob_reaches_the_host_by_its_hostname(tmp_path: Path) -> None:
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "10-web.conf").write_text("Host web001\n    HostName 10.0.0.1\n    Port 2201\n")
    (confd / "ignored.txt").write_text("Host web001\n    HostName 10.9.9.9\n")
    t = target(tmp_path, f"Include {confd}/*.conf\n", implicit("web001"))
    assert (t.address, t.port) == ("10.0.0.1", 2201)


@needs_ssh
def test_match_in_keyword_equals_value_form_is_read(tmp_path: Path) -> None:
    text = "Match host=b\n    User bee\nHost a\n    HostName 10.0.0.1\n"
    assert target(tmp_path, text, implicit("b")).user == "bee"
    assert target(tmp_path, text, implicit("a")).address == "10.0.0.1"  # not a parse error


@needs_ssh
def test_a_comment_after_a_value_is_not_part_of_it(tmp_path: Path) -> None:
    t = target(tmp_path, "Host dd\n    Hostname 10.0.0.4 # the db box\n", implicit("dd"))
    assert t.address == "10.0.0.4"


@needs_ssh
def test_percent_tokens_expand_as_openssh_does(tmp_path: Path) -> None:
    text = (
        "Host web1\n"
        "    User %u\n"
        "    Hostname %%h-%h\n"
        "    Port 2222\n"
        "    IdentityFile ~/.ssh/id_%r_%p\n"
        "    IdentityFile %d/keys/%n-%h\n"
    )
    t = target(tmp_path, text, implicit("web1"))
    me, home = getpass.getuser(), os.environ["HOME"]
    assert t.user == me  # %u: the local user
    assert t.address == "%h-web1"  # %% is a literal %, %h the name
    assert t.identity_files == (f"{home}/.ssh/id_{me}_2222", f"{home}/keys/web1-%h-web1")


@needs_ssh
def test_remote_user_token_is_the_inventory_user(tmp_path: Path) -> None:
    t = target(tmp_path, "Host *\n    IdentityFile /k/%r\n", implicit("x", user="deploy"))
    assert t.identity_files == ("/k/deploy",)


@needs_ssh
def test_host_brackets_are_no_character_class(tmp_path: Path) -> None:
    text = "Host web[12]\n    User classy\nHost *\n    User plain\n"
    assert target(tmp_path, text, implicit("web1")).user == "plain"
    assert target(tmp_path, text, implicit("web[12]")).user == "classy"


@needs_ssh
def test_the_first_obtained_value_wins_proxyjump_after_proxycommand(tmp_path: Path) -> None:
    text = "Host app\n    ProxyCommand nc %h %p\n    ProxyJump bastion\n"
    t = target(tmp_path, text, implicit("app"))
    assert t.jump is None
    assert t.proxy_command == "nc app 22"
    text = "Host app\n    ProxyJump bastion\n    ProxyCommand nc %h %p\n"
    t = target(tmp_path, text, implicit("app"))
    assert t.proxy_command is None and t.jump is not None and t.jump.address == "bastion"


@needs_ssh
def test_inventory_port_22_wins_over_the_configs_port(tmp_path: Path) -> None:
    text = "Host web1\n    Port 2222\n    IdentityFile /k/%p\n"
    t = target(tmp_path, text, implicit("web1", port=22))
    assert t.port == 22
    assert t.identity_files == ("/k/22",)  # %p is the port that wins
    assert target(tmp_path, text, implicit("web1")).port == 2222


@needs_ssh
def test_inventory_address_equal_to_the_name_wins_over_hostname(tmp_path: Path) -> None:
    text = "Host web1\n    HostName 10.0.0.1\n"
    assert target(tmp_path, text, implicit("web1", address="web1")).address == "web1"
    assert target(tmp_path, text, implicit("web1")).address == "10.0.0.1"


@needs_ssh
@pytest.mark.parametrize("value", ["none", "NONE"])
def test_inventory_jump_none_means_direct(tmp_path: Path, value: str) -> None:
    for text in ("Host app\n    ProxyJump bastion\n", "Host app\n    ProxyCommand nc %h %p\n"):
        t = target(tmp_path, text, implicit("app", jump=value))
        assert t.jump is None and t.proxy_command is None


def test_the_loader_records_which_values_the_inventory_set() -> None:
    inv = parse_inventory(
        "defaults: {port: 22}\n"
        "groups:\n"
        "  g: {vars: {user: u}, hosts: {a: {address: a}, b: null}}\n",
        "inventory.yaml",
    )
    a, b = inv.hosts
    assert a.explicit == frozenset({"port", "user", "address"})
    assert b.explicit == frozenset({"port", "user"})
    assert Host.from_dict(a.to_dict()) == a
    assert b.is_explicit("port") and not b.is_explicit("address")


def test_a_host_without_explicit_infers_it_from_the_values() -> None:
    # A Host built in code (or from an older submitter's message): non-defaults win.
    assert Host.from_dict({"name": "h", "address": "h"}).explicit is None
    host = Host("h", "10.0.0.1", port=22)
    assert host.is_explicit("address") and not host.is_explicit("port")
    assert not Host("h", "h").is_explicit("user")


# --- more of the same kind ---------------------------------------------------------


@needs_ssh
def test_match_originalhost_sees_the_name_not_the_hostname(tmp_path: Path) -> None:
    text = (
        "Host web1\n    HostName 10.0.0.1\n"
        "Match originalhost web1\n    User by-original\n"
        "Match host 10.0.0.1\n    Port 2200\n"
    )
    t = target(tmp_path, text, implicit("web1"))
    assert (t.address, t.user, t.port) == ("10.0.0.1", "by-original", 2200)


@needs_ssh
def test_host_star_defaults_after_a_specific_block_fill_only_what_is_left(
    tmp_path: Path,
) -> None:
    text = "Host db1\n    User dbadmin\nHost *\n    User everyone\n    Port 2022\n"
    t = target(tmp_path, text, implicit("db1"))
    assert (t.user, t.port) == ("dbadmin", 2022)


@needs_ssh
def test_several_identity_files_in_order_after_the_inventorys(tmp_path: Path) -> None:
    text = (
        "Host *\n    IdentityFile /k/one\n    IdentityFile /k/two\nHost h\n    IdentityFile /k/3\n"
    )
    t = target(tmp_path, text, implicit("h", identity_file="/k/inv"))
    assert t.identity_files == ("/k/inv", "/k/one", "/k/two", "/k/3")
    # OpenSSH's default keys are not "configured": fleet keeps its own default order.
    assert target(tmp_path, "Host other\n    User x\n", implicit("h")).identity_files == ()


@needs_ssh
def test_identities_only_is_carried(tmp_path: Path) -> None:
    t = target(tmp_path, "Host h\n    IdentitiesOnly yes\n", implicit("h"))
    assert t.identities_only
    assert not target(tmp_path, "Host x\n", implicit("h")).identities_only


@needs_ssh
def test_a_jump_hop_is_looked_up_with_its_own_user_and_port(tmp_path: Path) -> None:
    text = (
        "Host app\n    ProxyJump ops@bastion:2200\n"
        "Host bastion\n    HostName 10.0.0.9\n    User nobody\n    Port 22\n"
        "    IdentityFile /k/%r@%h:%p\n"
    )
    t = target(tmp_path, text, implicit("app"))
    assert t.jump is not None
    assert (t.jump.user, t.jump.address, t.jump.port) == ("ops", "10.0.0.9", 2200)
    assert t.jump.identity_files[0] == "/k/ops@10.0.0.9:2200"


@needs_ssh
def test_settings_fleet_does_not_apply_are_logged_once_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        "Host *\n    CanonicalizeHostname yes\n    CanonicalDomains example.com\n"
        "    StrictHostKeyChecking no\n    ConnectTimeout 3\n"
    )
    path = write(tmp_path, text)
    with caplog.at_level(logging.WARNING, logger="fleet.ssh.config"):
        for name in ("a", "b", "c"):
            resolve_target(implicit(name), path)
    said = [r.getMessage() for r in caplog.records]
    for keyword in ("canonicalizehostname", "stricthostkeychecking", "connecttimeout"):
        assert sum(keyword in line for line in said) == 1, said


@needs_ssh
def test_a_setting_that_cannot_be_honoured_is_the_hosts_error(tmp_path: Path) -> None:
    text = "Host h\n    ProxyCommand nc %h %p\n    ProxyUseFdpass yes\n"
    with pytest.raises(ConnectFailure, match="proxyusefdpass yes") as caught:
        target(tmp_path, text, implicit("h"))
    assert caught.value.status is Status.ERROR


@needs_ssh
@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Host h\n    NoSuchKeyword 1\n", "Bad configuration option"),
        ("Host h\n    IdentityFile /k/%z\n", "%z is not a token it accepts"),
        ("Host h\n    Include /nonexistent/x\n    User\n", "line"),
    ],
)
def test_a_config_ssh_refuses_is_the_hosts_error_naming_the_file(
    tmp_path: Path, text: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConnectFailure) as caught:
        resolve_target(implicit("h"), path)
    assert caught.value.status is Status.ERROR
    assert path in caught.value.message and words in caught.value.message


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("-oProxyCommand=touch /tmp/x", "starts with '-'"),
        ("root@web1", "user@host"),
        ("ssh://web1", "ssh://"),
        ("a b", "whitespace"),
    ],
)
def test_names_ssh_would_read_as_something_else_are_refused(name: str, why: str) -> None:
    with pytest.raises(ssh_g.SSHConfigProblem, match=why):
        ssh_g.ssh_g_argv("ssh", "/cfg", name)


def test_the_destination_comes_after_double_dash_and_percent_is_escaped() -> None:
    argv = ssh_g.ssh_g_argv("ssh", "/cfg", "web1", user="u", port=22, address="fe80::1%eth0")
    assert argv[-2:] == ["--", "web1"]
    assert argv[argv.index("-l") : argv.index("-l") + 2] == ["-l", "u"]
    assert "HostName=fe80::1%%eth0" in argv


@needs_ssh
def test_answers_are_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "ssh_config"
    path.write_text("Host h\n    Port 2201\n")
    assert lookup(str(path), "h").port == 2201
    assert len(ssh_g._cache) == 1
    lookup(str(path), "h")
    assert len(ssh_g._cache) == 1
    path.write_text("Host h\n    Port 2202\n    User someone-else\n")
    assert lookup(str(path), "h").port == 2202


def test_a_missing_config_file_is_no_config(tmp_path: Path) -> None:
    t = resolve_target(Host("h", "10.0.0.1", port=2200), str(tmp_path / "missing"))
    assert (t.address, t.port) == ("10.0.0.1", 2200)


# --- the documented fallback: paramiko's parser ------------------------------------


def test_without_openssh_paramikos_parser_is_used_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ssh_g, "_ssh", (None,))
    path = write(tmp_path, "Host web1\n    HostName 10.0.0.1\n    Port 2201\n    User u1\n")
    with caplog.at_level(logging.WARNING, logger="fleet.ssh.config"):
        t = resolve_target(implicit("web1"), path)
        assert (t.address, t.port, t.user) == ("10.0.0.1", 2201, "u1")
        t = resolve_target(implicit("web1", port=22, address="web1"), path)
        assert (t.address, t.port) == ("web1", 22)
    assert "paramiko's parser" in caplog.text
