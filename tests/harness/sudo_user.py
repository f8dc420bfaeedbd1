"""A plain login user with passwordless sudo, for tests where `--sudo` must make a
difference: the harness otherwise logs in as the test user, root in CI, for whom every
file is root's with or without sudo.

The user is made once per machine (`useradd`) and kept: its name says what it is for,
and the README's test command says it makes it. It has no password and no
``~/.ssh/authorized_keys``, so the machine's own sshd lets nobody in as it; the
harness's sshd accepts the test's client key for any user (one `AuthorizedKeysFile`
path), so an inventory with ``user: fleet-sudo-test`` logs in as it. Remove it with
``userdel -r fleet-sudo-test; rm /etc/sudoers.d/fleet-sudo-test``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
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
        # /bin/sh: no ~/.bashrc read on every command (PITFALLS: Debian's bash). Not
        # checked: a second test run on this machine may have made it meanwhile.
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=False)
        pwd.getpwnam(name)  # KeyError if it still does not exist
    # '*': no password can log in, but the account is not locked ('!'), which sshd
    # without PAM refuses even for a key.
    subprocess.run(["usermod", "-p", "*", name], check=True)
    wanted = f"{name} ALL=(ALL) NOPASSWD: ALL\n"
    if not SUDOERS.exists() or SUDOERS.read_text() != wanted:
        # A name with a dot, which sudo's includedir skips, until visudo has checked it.
        fd, staged = tempfile.mkstemp(prefix=".fleet-sudo-test.", dir=SUDOERS.parent)
        with os.fdopen(fd, "w") as out:
            out.write(wanted)
        os.chmod(staged, 0o440)
        subprocess.run(["visudo", "-cqf", staged], check=True)
        os.replace(staged, SUDOERS)
    return None


def uid_of(name: str = SUDO_USER) -> int:
    return pwd.getpwnam(name).pw_uid
