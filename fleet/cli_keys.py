"""``fleet keys init DIR [--name NAME]``: a signing key and its certificate, and the
environment lines that turn message signing on (`fleet.signing`)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from fleet.errors import EXIT_OK


def cmd_keys_init(args: argparse.Namespace) -> int:
    # Imported here: `fleet --help` and the other commands need no cryptography.
    from fleet.signing import CERT_ENV, KEY_ENV, STORE_ENV, create_keys

    pair = create_keys(Path(args.directory), args.name)
    key, cert = shlex.quote(str(pair.key.resolve())), shlex.quote(str(pair.cert.resolve()))
    store = "/etc/fleet/trusted"  # an example: any directory of the workers' choosing
    print(f"created {pair.key} (private key, mode 0600: keep it secret)")
    print(
        f"created {pair.cert} (certificate, CN={pair.name}, valid until {pair.not_after:%Y-%m-%d})"
    )
    print()
    print("On every machine that signs with this key (submitters: fleet run, the API, beat):")
    print(f"    export {KEY_ENV}={key}")
    print(f"    export {CERT_ENV}={cert}")
    print()
    print("On every worker (with its own key and certificate, or this one):")
    print(f"    export {KEY_ENV}={key}")
    print(f"    export {CERT_ENV}={cert}")
    print(f"    export {STORE_ENV}={store}")
    print()
    print(
        f"Copy {pair.cert.name} into every worker's {STORE_ENV} directory (e.g. {store}): "
        "a worker accepts only messages signed by a certificate there, its own included."
    )
    return EXIT_OK
