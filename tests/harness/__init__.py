"""The real-services test harness: redis-server, sshd hosts, Celery workers, fault stubs.

Every process is started on loopback with private ports and directories, recorded by
PID (`procs`) and stopped by PID, also at interpreter exit. Fixtures (in
tests/integration/conftest.py):

- ``redis_server`` (session) / ``fresh_redis`` (per test, free to ``restart()``/``kill()``)
- ``ssh_fleet`` (session, h02-h07 on 127.0.0.2-7; do not disturb) and
  ``make_ssh_fleet(n, own_key=(...))`` for private fleets (``kill_host``, ``start_host``,
  ``start_impostor``); ``fleet.write_inventory(path, group="web", extra_vars=...)``
- ``start_worker(queues=("fleet",), name=None, concurrency=4, env=None)``: Celery workers
  on the session Redis and the session fleet's known_hosts unless ``env`` says otherwise
- ``refused_port``, ``hung_listener``, ``banner_staller`` (127.0.1.x)
- ``ledger``: ``ledger.command("uptime")`` records ``$FLEET_RUN_ID`` in
  ``LEDGER/$FLEET_HOST`` then runs the command; ``ledger.lines("h02")`` reads it back.

The harness modules are usable outside pytest too (bench/): ``with SSHFleet(count=200)``.
"""
