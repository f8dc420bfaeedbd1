"""The ledger: how tests prove that a command ran exactly once per host and run.

Test commands append the run id to a file named after the host::

    printf '%s\\n' "$FLEET_RUN_ID" >> LEDGER_DIR/"$FLEET_HOST"

(fleet exports FLEET_RUN_ID and FLEET_HOST into the command's environment). All test
hosts are this machine, so the files land in the test's own directory. "Ran exactly
once" is one line; "never ran" is no file.
"""

from __future__ import annotations

import shlex
from pathlib import Path


class Ledger:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def command(self, then: str = "") -> str:
        """The shell snippet recording one execution, optionally followed by `then`."""
        record = f'printf \'%s\\n\' "$FLEET_RUN_ID" >> {shlex.quote(str(self.dir))}/"$FLEET_HOST"'
        return f"{record} && {then}" if then else record

    def lines(self, host_name: str) -> list[str]:
        """Run ids recorded for `host_name`, in order ([] if it never ran)."""
        path = self.dir / host_name
        return path.read_text().splitlines() if path.exists() else []

    def hosts(self) -> list[str]:
        """Names of hosts that ran anything."""
        return sorted(p.name for p in self.dir.iterdir() if p.is_file())

    def count(self, host_name: str, run_id: str) -> int:
        return self.lines(host_name).count(run_id)

    def assert_at_most_once(self) -> None:
        """No host recorded the same run id twice."""
        for name in self.hosts():
            seen = self.lines(name)
            dupes = sorted({r for r in seen if seen.count(r) > 1})
            assert not dupes, f"{name} ran run(s) {dupes} more than once"
