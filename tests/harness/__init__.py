"""The real-services test harness: redis-server, sshd hosts, Celery workers, fault stubs.

Every process is started on loopback with private ports and directories, recorded by
PID (`procs`) and stopped by PID, also at interpreter exit. See tests/integration/conftest.py
for the fixtures and /work/shared/TESTING.md for what the harness is for.
"""
