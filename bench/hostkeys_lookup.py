"""Host key lookups against a big known_hosts: the committed matcher vs the working tree's.

    python bench/hostkeys_lookup.py                  # 1,000 lines, 1,000 hosts
    python bench/hostkeys_lookup.py --lines 5000 --old-rev 37f927a

Builds a known_hosts like a real fleet's (mostly `[127.0.x.y]:port` names, some hashed,
a few wildcard and negated lines) and, for every host, does what a connection does
(`preferred_algorithms`, then `verify`: two known-key lookups and one @revoked lookup).
The old module is `git show REV:fleet/ssh/hostkeys.py` (by default the newest committed
version without the index, i.e. without `class _Section`), imported under another name, so
both run side by side in this process. CPU time is `time.process_time()`; the parse (done
once per file version, cached) is timed apart from the lookups. Both must give the same
keys for every host, else it exits 1. It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import paramiko  # noqa: E402

from fleet.ssh import hostkeys as new_hostkeys  # noqa: E402
from fleet.ssh.errors import ConnectFailure  # noqa: E402

OFFERED = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
WILDCARDS = (
    "*.corp.example",
    "[10.9.*]:22",
    "build-??.ci.example",
    "[127.1.*]:*,![127.1.0.1]:*",
    "db-*.example.com,!db-test*.example.com",
    "[192.168.?.*]:2222",
    "*.lab",
    "gw-?",
    "[10.8.0.*]:*",
    "!bastion.example.com,*.bastion.example.com",
)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout


def old_rev() -> str:
    """The newest commit whose fleet/ssh/hostkeys.py has no index (read-only git)."""
    for rev in git("log", "--format=%h", "--", "fleet/ssh/hostkeys.py").split():
        if "class _Section" not in git("show", f"{rev}:fleet/ssh/hostkeys.py"):
            return rev
    raise SystemExit("no committed fleet/ssh/hostkeys.py without the index; give --old-rev")


def load_old(rev: str, tmp: Path) -> ModuleType:
    source = git("show", f"{rev}:fleet/ssh/hostkeys.py")
    path = tmp / "hostkeys_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fleet_hostkeys_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


Host = tuple[str, paramiko.PKey, bool]  # name, the key it shows, whether the file has it


def build(path: Path, lines: int, hashed_share: float) -> list[Host]:
    """Write the file; return the hosts to look up."""
    wild = min(len(WILDCARDS), lines // 100)
    named = lines - wild
    hashed_every = round(1 / hashed_share) if hashed_share > 0 else 0
    hosts: list[Host] = []
    out: list[str] = []
    for i in range(named):
        name = f"[127.0.{i // 250}.{i % 250 + 1}]:{2200 + i % 16}"
        key = paramiko.ECDSAKey.generate()
        hashed = hashed_every and i % hashed_every == hashed_every - 1
        written = paramiko.HostKeys.hash_host(name) if hashed else name
        out.append(f"{written} {key.get_name()} {key.get_base64()}\n")
        hosts.append((name, key, True))
    key = paramiko.ECDSAKey.generate()
    for i in range(wild):  # spread through the file, as hand-added lines are
        at = (i + 1) * len(out) // (wild + 1)
        out.insert(at, f"{WILDCARDS[i]} {key.get_name()} {key.get_base64()}\n")
    path.write_text("".join(out))
    hosts += [(f"[127.0.200.{i + 1}]:2200", key, False) for i in range(wild)]  # new hosts
    return hosts


def connect_lookups(policy: Any, host: Host) -> tuple[str, ...]:
    """What fleet.ssh.connect asks of the policy for one host; the known keys, to compare."""
    name, key, in_file = host
    policy.preferred_algorithms(name, OFFERED)
    try:
        policy.verify(name, key)
    except ConnectFailure as e:
        if in_file:
            raise SystemExit(f"{name}: {e}") from e
    return tuple(k.get_base64() for _, k in policy.known_keys(name))


def timed(module: ModuleType, path: Path, hosts: list[Host]) -> Any:
    policy = module.HostKeyPolicy((str(path),), None, False)
    start = time.process_time()
    module._load(str(path))  # the parse, once per file version
    parse = time.process_time() - start
    start = time.process_time()
    answers = [connect_lookups(policy, host) for host in hosts]
    return parse, time.process_time() - start, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000, help="known_hosts lines (1000)")
    parser.add_argument("--hashed", type=float, default=0.05, help="share of hashed names")
    parser.add_argument("--old-rev", help="git revision of the old module (default: see above)")
    args = parser.parse_args()
    args.old_rev = args.old_rev or old_rev()
    with tempfile.TemporaryDirectory() as tmp:
        old_hostkeys = load_old(args.old_rev, Path(tmp))
        path = Path(tmp) / "known_hosts"
        hosts = build(path, args.lines, args.hashed)
        text = path.read_text()
        n_hashed = text.count("|1|")
        n_wild = sum(1 for line in text.splitlines() if "*" in line or "?" in line)
        print(
            f"known_hosts: {args.lines} lines ({n_hashed} hashed, {n_wild} wildcard/negated); "
            f"{len(hosts)} hosts, each: preferred_algorithms + verify "
            "(2 known-key lookups, 1 @revoked lookup)"
        )
        old = timed(old_hostkeys, path, hosts)
        new = timed(new_hostkeys, path, hosts)
    if old[2] != new[2]:
        bad = sum(a != b for a, b in zip(old[2], new[2], strict=True))
        print(f"MISMATCH: old and new disagree on {bad} hosts")
        return 1
    print(f"{'':24}{'parse CPU s':>12}{'lookups CPU s':>15}{'ms/host':>10}")
    for label, (parse, lookups, _) in ((f"old ({args.old_rev})", old), ("new (work tree)", new)):
        print(f"{label:24}{parse:12.3f}{lookups:15.3f}{lookups * 1000 / len(hosts):10.3f}")
    ratio = old[1] / new[1] if new[1] else float("inf")
    print(f"lookups old/new: {ratio:.0f}x; same keys for all {len(hosts)} hosts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
