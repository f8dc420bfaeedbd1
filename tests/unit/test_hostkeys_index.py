"""The known_hosts matcher of fleet.ssh.hostkeys: its per-file index gives OpenSSH's answers.

No network. Keys are generated once for the module and reused. The equivalence test
checks the indexed lookup against a plain loop over the file written here from the
OpenSSH rules (sshd(8) SSH_KNOWN_HOSTS FILE FORMAT, ssh_config(5) PATTERNS).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from fleet.results import Status
from fleet.ssh import hostkeys
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.hostkeys import HostKeyPolicy, host_key_name

KEYS: list[paramiko.PKey] = [paramiko.ECDSAKey.generate() for _ in range(6)]
RSA = paramiko.RSAKey.generate(1024)
A, B, C, D, E, F = KEYS


def line(names: str, key: paramiko.PKey, marker: str = "") -> str:
    return f"{marker}{names} {key.get_name()} {key.get_base64()}\n"


def hashed(name: str) -> str:
    return paramiko.HostKeys.hash_host(name)


def policy(path: Path) -> HostKeyPolicy:
    return HostKeyPolicy((str(path),), None)


def blobs(found: list[tuple[str, paramiko.PKey]]) -> list[str]:
    return [key.get_base64() for _, key in found]


def known(path: Path, name: str) -> list[str]:
    return blobs(policy(path).known_keys(name))


@pytest.fixture
def kh(tmp_path: Path) -> Path:
    return tmp_path / "known_hosts"


def test_literal_names(kh: Path) -> None:
    kh.write_text(line("web1.example.com,10.0.0.1", A) + line("web2.example.com", B))
    assert known(kh, "web1.example.com") == [A.get_base64()]
    assert known(kh, "10.0.0.1") == [A.get_base64()]
    assert known(kh, "web2.example.com") == [B.get_base64()]
    assert known(kh, "web3.example.com") == []
    assert known(kh, "web1.example.co") == [] and known(kh, "eb1.example.com") == []


def test_addr_port_names(kh: Path) -> None:
    kh.write_text(line("[10.0.0.1]:2222", A) + line("10.0.0.2", B))
    assert known(kh, host_key_name("10.0.0.1", 2222)) == [A.get_base64()]
    assert known(kh, host_key_name("10.0.0.1", 22)) == []  # no port-less fallback
    assert known(kh, "[10.0.0.1]:22") == [] and known(kh, "[10.0.0.1]:222") == []
    assert known(kh, host_key_name("10.0.0.2", 22)) == [B.get_base64()]
    assert known(kh, host_key_name("10.0.0.2", 2222)) == []
    assert known(kh, "1:2222") == []  # brackets are literal, not a character class


def test_wildcards(kh: Path) -> None:
    kh.write_text(
        line("*.example.com", A)
        + line("[10.0.0.?]:2222", B)
        + line("web-??.corp", C)
        + line("[10.1.*]:*", D)
    )
    assert known(kh, "a.example.com") == [A.get_base64()]
    assert known(kh, "a.b.example.com") == [A.get_base64()]
    assert known(kh, "example.com") == [] and known(kh, "a.example.com.evil") == []
    assert known(kh, "[10.0.0.5]:2222") == [B.get_base64()]
    assert known(kh, "[10.0.0.15]:2222") == [] and known(kh, "[10.0.0.]:2222") == []
    assert known(kh, "web-01.corp") == [C.get_base64()] and known(kh, "web-1.corp") == []
    assert known(kh, "[10.1.2.3]:2200") == [D.get_base64()]
    assert known(kh, "10.1.2.3") == []
    kh.write_text(line("*", E))
    assert known(kh, "anything") == [E.get_base64()]
    assert known(kh, "[10.0.0.1]:2222") == [E.get_base64()]


def test_negated_patterns(kh: Path) -> None:
    kh.write_text(
        line("[10.0.0.*]:2222,![10.0.0.2]:2222", A)
        + line("!only.negated", B)
        + line("same,!same", C)
        + line("*.example.com,!DB*.example.com", D)
        + line("![10.0.0.3]:2222,plain.host", E)
    )
    assert known(kh, "[10.0.0.1]:2222") == [A.get_base64()]
    assert known(kh, "[10.0.0.2]:2222") == []
    assert known(kh, "only.negated") == [] and known(kh, "other") == []  # no positive match
    assert known(kh, "same") == []
    assert known(kh, "web.example.com") == [D.get_base64()]
    assert known(kh, "db1.example.com") == [] and known(kh, "DB1.Example.com") == []
    assert known(kh, "plain.host") == [E.get_base64()]
    assert known(kh, "[10.0.0.3]:2222") == [A.get_base64()]  # a negation holds on its line only


def test_hashed_names(kh: Path) -> None:
    kh.write_text(
        line(hashed("[10.0.0.1]:2222"), A)
        + line(hashed("web1.example.com"), B)
        + line("|1|not-base64|nope", C)  # skipped, not fatal
        + line("|1|" + "A" * 28 + "|" + "B" * 28 + "|extra", D)
        + line("plain.host", E)
    )
    assert known(kh, "[10.0.0.1]:2222") == [A.get_base64()]
    assert known(kh, "web1.example.com") == [B.get_base64()]
    assert known(kh, "WEB1.Example.COM") == [B.get_base64()]  # the host is hashed lower-cased
    assert known(kh, "web2.example.com") == [] and known(kh, "[10.0.0.1]:22") == []
    assert known(kh, "plain.host") == [E.get_base64()]


def test_hashed_lookups_are_remembered_per_file_version(
    kh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kh.write_text("".join(line(hashed(f"host{i}"), KEYS[i % 6]) for i in range(50)))
    calls = 0
    real = hmac.digest

    def counting(key: bytes, msg: bytes, digest: str) -> bytes:
        nonlocal calls
        calls += 1
        return real(key, msg, digest)

    monkeypatch.setattr(hmac, "digest", counting)  # the module fleet.ssh.hostkeys calls
    p = policy(kh)
    assert known(kh, "host7") == [KEYS[7 % 6].get_base64()]
    assert calls == 50  # one HMAC per hashed line, salts decoded at parse time
    for _ in range(3):
        p.preferred_algorithms("host7", ("ecdsa-sha2-nistp256", "ssh-ed25519"))
        p.verify("host7", KEYS[7 % 6])
    assert calls == 50  # the same host again: no HMAC at all
    assert known(kh, "host8") == [KEYS[8 % 6].get_base64()] and calls == 100


def test_memo_limit_keeps_answers_right(kh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostkeys, "_MEMO_MAX", 3)
    kh.write_text(line("*.a", A) + "".join(line(f"h{i}.a", KEYS[i % 6]) for i in range(10)))
    for _ in range(2):
        for i in range(10):
            assert known(kh, f"h{i}.a") == [A.get_base64(), KEYS[i % 6].get_base64()]
    parsed = hostkeys._load(str(kh))
    assert parsed is not None and len(parsed.keys.memo) <= 3


def test_case_insensitive(kh: Path) -> None:
    kh.write_text(line("Host.EXAMPLE.com", A) + line("*.CORP.Example", B) + line("[WEB]:2222", C))
    assert known(kh, "host.example.COM") == [A.get_base64()]
    assert known(kh, "HOST.EXAMPLE.COM") == [A.get_base64()]
    assert known(kh, "x.corp.example") == [B.get_base64()]
    assert known(kh, "[web]:2222") == [C.get_base64()]


def test_file_order_is_kept(kh: Path) -> None:
    kh.write_text(
        line("*.example.com", A)
        + line("h.example.com", B)
        + line(hashed("h.example.com"), C)
        + line("other,H.example.com", D)
        + line("h.example.com,h.example.com", E)  # a name twice: the line once
        + line("h.example.com,!nothing", F)
    )
    want = [k.get_base64() for k in (A, B, C, D, E, F)]
    assert known(kh, "h.example.com") == want
    assert known(kh, "h.example.com") == want  # from the memo, same order


def test_preferred_algorithms_and_changed_message_follow_file_order(kh: Path) -> None:
    offered = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
    kh.write_text(line("h", A) + line("*", RSA))
    assert policy(kh).preferred_algorithms("h", offered)[:2] == (
        "ecdsa-sha2-nistp256",
        "rsa-sha2-512",
    )
    kh.write_text(line("*", RSA) + line("h", A) + "# a comment keeps the sizes apart\n")
    assert policy(kh).preferred_algorithms("h", offered)[:2] == ("rsa-sha2-512", "rsa-sha2-256")
    with pytest.raises(ConnectFailure) as err:
        policy(kh).verify("h", B)
    text = str(err.value)
    assert err.value.status is Status.HOSTKEY_REJECTED and "CHANGED" in text
    assert text.index(hostkeys.fingerprint(RSA)) < text.index(hostkeys.fingerprint(A))


def test_revoked_and_cert_authority(kh: Path) -> None:
    kh.write_text(
        line("*.example.com", A, "@cert-authority ")
        + line("[10.0.0.*]:2222", B, "@revoked ")
        + line(hashed("h.example.com"), C, "@revoked ")
        + line("h.example.com,[10.0.0.1]:2222", C)
    )
    p = policy(kh)
    assert blobs(p.revoked_keys("[10.0.0.1]:2222")) == [B.get_base64()]
    assert blobs(p.revoked_keys("h.example.com")) == [C.get_base64()]
    assert blobs(p.known_keys("a.example.com")) == []  # the CA line is skipped
    assert blobs(p.known_keys("[10.0.0.1]:2222")) == [C.get_base64()]  # revoked lines apart
    with pytest.raises(ConnectFailure, match="REVOKED"):
        p.verify("h.example.com", C)
    with pytest.raises(ConnectFailure, match="REVOKED"):
        p.verify("[10.0.0.1]:2222", B)
    p.verify("[10.0.0.1]:2222", C)


def test_rewritten_file_is_read_again(kh: Path, tmp_path: Path) -> None:
    kh.write_text(line("h", A) + line("*.w", B))
    assert known(kh, "h") == [A.get_base64()] and known(kh, "x.w") == [B.get_base64()]
    before = os.stat(kh)
    # Same size, rewritten in place; the clock may not have moved, so move mtime on.
    kh.write_text(line("h", C) + line("*.w", D))
    os.utime(kh, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert os.stat(kh).st_size == before.st_size
    assert known(kh, "h") == [C.get_base64()] and known(kh, "x.w") == [D.get_base64()]
    # Same size and mtime, but a new file moved into place.
    now = os.stat(kh)
    new = tmp_path / "known_hosts.new"
    new.write_text(line("h", E) + line("*.w", F))
    os.utime(new, ns=(now.st_atime_ns, now.st_mtime_ns))
    os.replace(new, kh)
    assert known(kh, "h") == [E.get_base64()] and known(kh, "x.w") == [F.get_base64()]
    # Grown: a line appended (as accept-new does).
    with kh.open("a") as f:
        f.write(line("g", A))
    assert known(kh, "g") == [A.get_base64()] and known(kh, "h") == [E.get_base64()]
    kh.unlink()
    assert known(kh, "h") == []


# -- equivalence with a plain loop over the file ------------------------------------


@functools.cache
def _ref_pattern(pattern: str) -> re.Pattern[str]:
    # ssh_config(5) PATTERNS: `*` any run of characters, `?` exactly one, the rest literal.
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.compile("".join(parts), re.DOTALL)


def _ref_hashed(name: str, host: str) -> bool:
    try:
        _, magic, salt, digest = name.split("|")
        mac = hmac.new(base64.b64decode(salt, validate=True), host.encode(), hashlib.sha1)
    except ValueError:
        return False
    return magic == "1" and base64.b64encode(mac.digest()).decode() == digest


def reference(text: str, host: str, *, revoked: bool) -> list[str]:
    """Key blobs of the lines naming `host`, in file order, by the book."""
    host = host.lower()
    found = []
    for raw in text.splitlines():
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        marker = ""
        if entry.startswith("@"):
            marker, _, entry = entry.partition(" ")
        if marker not in ("", "@revoked") or (marker == "@revoked") != revoked:
            continue
        fields = entry.split(" ")
        if len(fields) < 3 or fields[1] not in ("ecdsa-sha2-nistp256", "ssh-rsa"):
            continue
        positive = negative = False
        for name in fields[0].split(","):
            if name.startswith("|1|"):
                positive = positive or _ref_hashed(name, host)
            elif name.startswith("!"):
                negative = negative or bool(_ref_pattern(name[1:]).fullmatch(host))
            else:
                positive = positive or bool(_ref_pattern(name).fullmatch(host))
        if positive and not negative:
            found.append(fields[2])
    return found


def _generated(rng: random.Random) -> tuple[str, list[str]]:
    """A known_hosts of every kind of line, and the host names to look up in it."""
    fleet = [
        f"[127.0.{rng.randrange(4)}.{rng.randrange(40)}]:{2200 + rng.randrange(4)}"
        for _ in range(200)
    ]
    dns = [
        f"{rng.choice(['web', 'db', 'Cache'])}-{i:02d}.{rng.choice(['example.com', 'corp'])}"
        for i in range(60)
    ]
    names = list(dict.fromkeys(fleet + dns))
    out: list[str] = ["# generated\n", "\n"]
    for _ in range(420):
        key = rng.choice(KEYS)
        kind = rng.randrange(100)
        if kind < 45:
            picked = rng.sample(names, rng.choice([1, 1, 1, 2, 3]))
            text = ",".join(n.upper() if rng.random() < 0.1 else n for n in picked)
        elif kind < 60:
            text = hashed(rng.choice(names).lower())
        elif kind < 70:
            text = rng.choice(
                [
                    "[127.0.1.*]:2201",
                    "[127.0.?.1?]:*",
                    "*.corp",
                    "web-?1.example.com",
                    "*",
                    "DB-*.EXAMPLE.COM",
                    "[127.0.3.3*]:220?",
                    "*-0?.*",
                ]
            )
        elif kind < 80:
            pos = rng.choice(["[127.0.2.*]:*", "*.example.com", rng.choice(names), "*"])
            neg = rng.choice(["[127.0.2.1?]:*", "web-*", rng.choice(names), "*:2203", "CACHE-*"])
            text = f"{pos},!{neg}" if rng.random() < 0.5 else f"!{neg},{pos}"
        elif kind < 85:
            text = f"!{rng.choice(names)}"
        elif kind < 93:
            marker = rng.choice(["@revoked ", "@revoked ", "@cert-authority "])
            body = rng.choice(
                [rng.choice(names), hashed(rng.choice(names).lower()), "[127.0.0.*]:*"]
            )
            out.append(line(body, key, marker))
            continue
        elif kind < 96:
            text = rng.choice(["|1|bad|bad", "|1|" + "A" * 28 + "|" + "A" * 28, "|2|x|y"])
        else:
            out.append(rng.choice(["garbage line here\n", "only-a-name\n", "   \n", "# c\n"]))
            continue
        out.append(line(text, key))
    hosts = names + [n.upper() for n in names[:40]] + [n.replace("]:", "]:9") for n in fleet[:40]]
    hosts += [f"[127.0.{a}.{b}]:{p}" for a in range(4) for b in (1, 11, 33) for p in (2201, 2203)]
    hosts += ["web-21.example.com", "x.corp", "nothing.here", "127.0.0.1", "[127.0.0.1]:22", ""]
    return "".join(out), hosts


def test_index_gives_the_reference_answers(kh: Path) -> None:
    text, hosts = _generated(random.Random(20240611))
    kh.write_text(text)
    p = policy(kh)
    seen_hits = seen_revoked = 0
    for _ in range(2):  # the second round answers from the memo
        for host in hosts:
            want = reference(text, host, revoked=False)
            assert blobs(p.known_keys(host)) == want, host
            want_revoked = reference(text, host, revoked=True)
            assert blobs(p.revoked_keys(host)) == want_revoked, host
            seen_hits += len(want) > 1
            seen_revoked += bool(want_revoked)
    assert seen_hits > 50 and seen_revoked > 10  # the file exercises many-line answers


def openssh(path: Path, host: str) -> tuple[list[str], list[str]]:
    """`ssh-keygen -F`'s answer (OpenSSH's own matcher): key blobs of plain and @revoked lines."""
    out = subprocess.run(
        ["ssh-keygen", "-F", host, "-f", str(path)], capture_output=True, text=True, check=False
    ).stdout
    lines = path.read_text().splitlines()
    plain: list[str] = []
    revoked: list[str] = []
    for found in re.finditer(r"^# Host .* found: line (\d+) ?(\w*)$", out, re.MULTILINE):
        blob = lines[int(found[1]) - 1].split(" ")[-1]
        {"": plain, "REVOKED": revoked}.get(found[2], []).append(blob)  # CA lines: not used
    return plain, revoked


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_index_gives_openssh_answers(kh: Path) -> None:
    text, hosts = _generated(random.Random(7))
    kh.write_text(text)
    p = policy(kh)
    # ssh lower-cases the host name before looking it up (and before hashing it).
    names = sorted({h.lower() for h in hosts if h})
    revoked = 0
    for host in random.Random(7).sample(names, 120):
        want = openssh(kh, host)
        assert (blobs(p.known_keys(host)), blobs(p.revoked_keys(host))) == want, host
        revoked += bool(want[1])
    assert revoked > 10


def test_threads_missing_the_cache_together_parse_the_file_once(
    kh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kh.write_text("".join(line(f"h{i}.example", KEYS[i % 6]) for i in range(200)))
    parses: list[str] = []
    real_parse = hostkeys._parse

    def counting_parse(path: str) -> object:
        parses.append(path)
        time.sleep(0.05)  # long enough for every thread to miss the cache
        return real_parse(path)

    monkeypatch.setattr(hostkeys, "_parse", counting_parse)
    monkeypatch.setattr(hostkeys, "_cache", {})
    start = threading.Barrier(32)
    found: list[list[str]] = []

    def look_up(i: int) -> None:
        start.wait()
        found.append(known(kh, f"h{i}.example"))

    threads = [threading.Thread(target=look_up, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(parses) == 1
    assert all(len(keys) == 1 for keys in found)


def test_a_recorded_key_creates_a_private_home_and_lock(tmp_path: Path) -> None:
    """Trust on first use writes fleet's known_hosts in FLEET_HOME: the directory it
    creates is 0700 and the lock file 0600, whatever the umask (README, "Security
    defaults"), like the file itself."""
    home = tmp_path / "fleet-home"
    record = home / "known_hosts"
    old_umask = os.umask(0o022)
    try:
        HostKeyPolicy((str(record),), str(record), accept_new=True).verify("[10.0.0.1]:22", A)
    finally:
        os.umask(old_umask)
    assert home.stat().st_mode & 0o777 == 0o700
    assert record.stat().st_mode & 0o777 == 0o600
    assert Path(str(record) + ".lock").stat().st_mode & 0o777 == 0o600
    assert known(record, "[10.0.0.1]:22") == [A.get_base64()]
