"""What signing a task message costs (fleet.signing, Celery's ``auth`` serializer).

    python bench/signing.py                    # 2,000 messages, RSA 3072 and 2048
    python bench/signing.py --messages 5000 --bits 3072

Builds a realistic ``fleet.run_on_host`` message body (run id, one host's connection
values, a command, the run's options, and the chord's callback in the embed, as Celery
protocol 2 carries it) and times, per message: plain JSON (kombu's ``json`` dumps and
loads, what an unsigned fleet sends) against Celery's `SecureSerializer` (sign with the
private key, RSA-PSS over SHA-256, then verify against the certificate store), the very
code the ``auth`` serializer runs. No broker: the serializer only. The submitter pays
the sign once per host; each worker pays the verify once per message it takes. CPU time
is `time.process_time()`. It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from celery.security.certificate import Certificate, CertStore  # noqa: E402
from celery.security.key import PrivateKey  # noqa: E402
from celery.security.serialization import SecureSerializer  # noqa: E402
from kombu.serialization import dumps, loads  # noqa: E402

from fleet.command import ExecOptions  # noqa: E402
from fleet.settings import Settings  # noqa: E402
from fleet.signing import DIGEST, create_keys  # noqa: E402


def message_body() -> list[Any]:
    """A ``fleet.run_on_host`` body as fleet publishes it: (args, kwargs, embed)."""
    run_id = "20260101-120000-a1b2c3"
    host = {
        "name": "web042.dc-eu.example.com",
        "address": "10.20.30.42",
        "port": 22,
        "user": "deploy",
        "identity_file": "/etc/fleet/keys/deploy_ed25519",
        "queue": "dc-eu",
        "connection": "ssh",
        "password_env": None,
        "become_password_env": None,
        "jump": None,
        "env": {"APP_MODE": "blue"},
    }
    options = ExecOptions.from_settings(Settings()).to_dict()
    command = "systemctl is-active nginx && df -h / && uptime"
    callback = {
        "task": "fleet.aggregate",
        "args": [],
        "kwargs": {"run_id": run_id},
        "options": {"queue": "dc-eu", "task_id": "4c3f7a4e-6c1b-4f55-9d0e-3c9a5b0e1f2a"},
        "subtask_type": None,
        "immutable": False,
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": callback}
    return [[run_id, host, command, options], {}, embed]


def per_message_us(action: Callable[[], Any], count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        action()
    return (time.process_time() - start) / count * 1e6


def measure(bits: int, count: int, body: list[Any], workdir: Path) -> dict[str, float]:
    pair = create_keys(workdir / f"rsa{bits}", f"bench{bits}", bits=bits)
    cert = Certificate(pair.cert.read_text())
    store = CertStore()
    store.add_cert(cert)
    serializer = SecureSerializer(PrivateKey(pair.key.read_text()), cert, store, DIGEST)
    _ct, _enc, plain = dumps(body, serializer="json")
    signed = serializer.serialize(body)
    assert serializer.deserialize(signed) == body  # the bench measures a working round trip
    return {
        "json_dumps": per_message_us(lambda: dumps(body, serializer="json"), count),
        "json_loads": per_message_us(
            lambda: loads(plain, "application/json", "utf-8", accept=["application/json"]), count
        ),
        "sign": per_message_us(lambda: serializer.serialize(body), count),
        "verify": per_message_us(lambda: serializer.deserialize(signed), count),
        "plain_bytes": len(plain.encode() if isinstance(plain, str) else plain),
        "signed_bytes": len(signed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per figure")
    parser.add_argument(
        "--bits", type=int, action="append", help="RSA key size (repeatable; default 3072, 2048)"
    )
    args = parser.parse_args()
    body = message_body()
    print(f"fleet.run_on_host message, {args.messages} messages per figure, CPU time")
    print(f"{'key':<9}{'who':>14}{'JSON us':>10}{'signed us':>11}{'x':>8}{'bytes':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for bits in args.bits or [3072, 2048]:
            r = measure(bits, args.messages, body, Path(tmp))
            size = f"{r['plain_bytes']:.0f} -> {r['signed_bytes']:.0f}"
            for label, plain, signed in (
                ("submitter sign", r["json_dumps"], r["sign"]),
                ("worker verify", r["json_loads"], r["verify"]),
            ):
                print(
                    f"RSA {bits:<5}{label:>14}"
                    f"{plain:>10.1f}{signed:>11.1f}{signed / plain:>8.0f}{size:>16}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
