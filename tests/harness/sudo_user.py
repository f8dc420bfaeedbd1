"""A plain login user with passwordless sudo, for tests where `--sudo` must make a
difference: the harness otherwise logs in as the test user, root in CI, for whom every
file is root's with or without sudo.

The user is made once per machine (`useradd`) and kept: its name says what it is for.
The harness's sshd accepts the client key for any user (one `AuthorizedKeysFile` path),
so an inventory with ``user: fleet-sudo-test`` logs in as it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

SUDO_USER = "fleet-sudo-test"
SUDOERS = Path("/etc/sudoers.d/fleet-sudo-test")


def ensure_sudo_user(name: str = SUDO_USER) -> str | None:
    """Make `name` exist with passwordless sudo; None when it does, else why not (a
    reason to skip: not root, no sudo or useradd)."""
    if os.geteuid() != 0:
        return "making a login user with sudo needs root"
    for tool in ("sudo", "useradd", "usermod", "visudo"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        pwd.getpwnam(name)
    except KeyError:
        # /bin/sh: no ~/.bashrc read on every command (PITFALLS: Debian's bash).
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    # '*': no password can log in, but the account is not locked ('!'), which sshd
    # without PAM refuses even for a key.
    subprocess.run(["usermod", "-p", "*", name], check=True)
    wanted = f"{name} ALL=(ALL) NOPASSWD: ALL\n"
    if not SUDOERS.exists() or SUDOERS.read_text() != wanted:
        staged = SUDOERS.with_name(".fleet-sudo-test.new")
        staged.write_text(wanted)
        staged.chmod(0o440)
        subprocess.run(["visudo", "-cqf", str(staged)], check=True)
        staged.replace(SUDOERS)
    return None


def uid_of(name: str = SUDO_USER) -> int:
    return pwd.getpwnam(name).pw_uid
