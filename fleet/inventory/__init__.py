"""The inventory: hosts, groups and variables, and the patterns that select them.

- `fleet.inventory.loader`: `load_inventory(path)` -> `Inventory` (`.select(pattern)`);
  safe YAML with limits (our own composer over PyYAML's events);
- `fleet.inventory.schema`: validation, every problem with its key path;
- `fleet.inventory.formats`: fleet's YAML, Ansible's YAML or Ansible's INI, and which;
  `ansible_ini`, `ansible_yaml` read Ansible's formats into `ansible_model` (Ansible's
  rules), `ansible_vars` says what Ansible's variables mean to fleet;
- `fleet.inventory.patterns`: Ansible host patterns (`web:&prod:!web03`);
- `fleet.inventory.noderange`: clush node ranges (`web[01-04]`) through ClusterShell;
- `fleet.inventory.hosts`: `Host`, the resolved connection values of one host, and
  `DEFAULT_QUEUE`.

This `__init__` imports nothing, so importing `Host` costs no YAML or ClusterShell.
"""
