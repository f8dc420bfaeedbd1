"""Signed task messages: keys, certificates and the checks around Celery's ``auth``
serializer.

Whoever can write to the broker can otherwise make the workers run anything on every
host. With signing on, each task message body is signed with the sender's RSA key and
a worker only takes messages whose signature verifies against a certificate in its own
store (Celery "Security: Message Signing"; ``celery.security``). Settings::

    FLEET_SIGNING_KEY         PEM private key (RSA) this process signs with
    FLEET_SIGNING_CERT        its X.509 certificate (PEM), whose public key matches
    FLEET_SIGNING_CERT_STORE  directory of the certificates of trusted signers;
                              required on workers, optional on submitters

All three unset: signing off. Embedded mode (no broker) never signs. Anything half
configured is a `ConfigError` naming the setting and the file. Celery signs the body
(the task's arguments, callbacks and chord), not the headers (task name, eta, expires,
time limits); a replayed genuine message is refused by the run's claims
(`fleet.lifecycle.run_host_job`), not by the signature.

Framework-free (``cryptography`` only): `fleet.celery` applies `SigningConfig`,
`fleet.worker` checks a worker's own set-up and installs `RefusedMessageFilter`.
``cryptography`` is imported by the functions that read or make keys and certificates,
not by this module: with signing off (the usual case) no command pays for it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import ConfigError, UsageError
from fleet.settings import Settings
from fleet.textsafe import make_visible_line

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

KEY_ENV = "FLEET_SIGNING_KEY"
CERT_ENV = "FLEET_SIGNING_CERT"
STORE_ENV = "FLEET_SIGNING_CERT_STORE"
#: Celery's ``security_digest``; its serializer signs with RSA-PSS over this digest.
DIGEST = "sha256"
#: RSA only: Celery's `PrivateKey` and `Certificate` refuse other key types.
KEY_BITS = 3072
CERT_DAYS = 3650
#: Celery's serializer name and the content type of a signed message.
AUTH = "auth"
SIGNED_CONTENT_TYPE = "application/data"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class SigningConfig:
    """A checked signing set-up: file paths, as given."""

    key: str
    cert: str
    cert_store: str | None  # None: a submitter, which verifies nothing
    signer: str  # the certificate's CN

    def celery_settings(self) -> dict[str, Any]:
        """The Celery settings that make an app sign and accept only signed messages.

        Without a store (a submitter) the own certificate stands in: Celery insists on
        one, and a submitter never deserializes a signed message."""
        return {
            "task_serializer": AUTH,
            "accept_content": [AUTH],
            "security_key": self.key,
            "security_certificate": self.cert,
            "security_cert_store": self.cert_store or self.cert,
            "security_digest": DIGEST,
        }


def signing_config(settings: Settings) -> SigningConfig | None:
    """The signing set-up of `settings`, or None when signing is off (nothing set, or
    embedded mode). Raises `ConfigError` naming the setting and file when it is half
    configured, unreadable, not RSA, expired, or the key is not the certificate's."""
    if settings.is_embedded:
        return None
    key, cert, store = settings.signing_key, settings.signing_cert, settings.signing_cert_store
    if not (key or cert or store):
        return None
    for name, value in ((KEY_ENV, key), (CERT_ENV, cert)):
        if not value:
            set_ = ((KEY_ENV, key), (CERT_ENV, cert), (STORE_ENV, store))
            given = ", ".join(n for n, v in set_ if v)
            raise ConfigError(
                f"{name} is not set, but {given} is: signing needs the key and its "
                "certificate (create them with: fleet keys init DIR)"
            )
    private = _load_key(key)
    certificate = load_certificate(cert, CERT_ENV)
    if _public_bytes(certificate.public_key()) != _public_bytes(private.public_key()):
        raise ConfigError(f"{KEY_ENV} {key}: not the key of the certificate {CERT_ENV} {cert}")
    if store:
        trusted_certificates(store)
    return SigningConfig(
        key=key, cert=cert, cert_store=store or None, signer=common_name(certificate)
    )


def check_worker_signing(config: SigningConfig) -> None:
    """What a signing worker needs beyond a submitter: a store, holding its own
    certificate (workers publish chord callbacks that other workers, and it, verify).

    Raises `ConfigError` naming the setting."""
    if not config.cert_store:
        raise ConfigError(
            f"{STORE_ENV} is not set: a signing worker needs the directory of the "
            "certificates it trusts (every submitter's and every worker's)"
        )
    own = load_certificate(config.cert, CERT_ENV)
    if _cert_id(own) not in {_cert_id(c) for c in trusted_certificates(config.cert_store)}:
        raise ConfigError(
            f"{STORE_ENV} {config.cert_store}: does not hold this worker's own certificate "
            f"{CERT_ENV} {config.cert}: copy it there (the chord callbacks this worker "
            "sends must verify on every worker)"
        )


def signer_identity(settings: Settings) -> str | None:
    """The CN of the configured signing certificate, or None when signing is off.
    Raises `ConfigError` as `signing_config` does."""
    config = signing_config(settings)
    return config.signer if config else None


def load_certificate(path: str, setting: str) -> x509.Certificate:
    """The X.509 certificate (PEM, RSA, not expired) at `path`. Raises `ConfigError`."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    data = _read(path, setting)
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{setting} {path}: not a PEM X.509 certificate") from None
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise ConfigError(f"{setting} {path}: not an RSA certificate (Celery signs with RSA)")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ConfigError(f"{setting} {path}: expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return cert


def trusted_certificates(store: str) -> list[x509.Certificate]:
    """Every certificate in the store directory, as Celery's `FSCertStore` reads it
    (every file in it; two with the same issuer and serial are refused). Raises
    `ConfigError` naming the directory or the file."""
    if not os.path.isdir(store):
        raise ConfigError(f"{STORE_ENV} {store}: no such directory")
    certs: dict[tuple[str, int], str] = {}
    found: list[x509.Certificate] = []
    try:
        entries = sorted(os.listdir(store))
    except OSError as exc:
        raise ConfigError(f"{STORE_ENV} {store}: cannot read: {exc.strerror}") from None
    for entry in entries:
        path = os.path.join(store, entry)
        cert = load_certificate(path, STORE_ENV)
        ident = _cert_id(cert)
        if ident in certs:
            raise ConfigError(f"{STORE_ENV} {path}: the same certificate as {certs[ident]}")
        certs[ident] = path
        found.append(cert)
    if not found:
        raise ConfigError(f"{STORE_ENV} {store}: holds no certificate: nothing would verify")
    return found


def common_name(cert: x509.Certificate) -> str:
    """The certificate's subject CN (its serial number when it has none), made visible."""
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else f"serial {cert.serial_number}"
    return make_visible_line(value if isinstance(value, str) else value.decode(errors="replace"))


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Files written by `create_keys`."""

    key: Path
    cert: Path
    name: str
    not_after: dt.datetime


def create_keys(
    directory: Path, name: str, *, bits: int = KEY_BITS, days: int = CERT_DAYS
) -> KeyPair:
    """Write ``NAME.key`` (RSA, PEM, mode 0600) and a self-signed ``NAME.pem`` (X.509,
    CN=NAME, `days` valid) into `directory` (created 0700 when missing).

    Raises `UsageError` for a bad name, a directory others can enter, or when either
    file exists (nothing is overwritten, nothing half written)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    if not _NAME.fullmatch(name):
        raise UsageError(f"--name {name!r}: letters, digits, '.', '_', '-' only (at most 64)")
    if directory.exists():
        mode = stat.S_IMODE(directory.stat().st_mode)
        if not directory.is_dir():
            raise UsageError(f"{directory}: not a directory")
        if mode & 0o077:
            raise UsageError(
                f"{directory}: others can enter it (mode {mode:04o}); name a new directory "
                f"(e.g. {directory / 'fleet-keys'}), which fleet creates private (0700)"
            )
    else:
        directory.mkdir(mode=0o700, parents=True)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    for path in (key_path, cert_path):
        if path.exists():
            raise UsageError(f"{path}: already exists; not overwritten")
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # clocks of other machines
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(key_path, key_pem, 0o600)
    try:
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        key_path.unlink()
        raise
    return KeyPair(key=key_path, cert=cert_path, name=name, not_after=cert.not_valid_after_utc)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: a file that appeared since the check is not overwritten either.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageError(f"{path}: already exists; not overwritten") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # not widened or narrowed by the umask


def _read(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: cannot read: {exc.strerror}") from None


def _load_key(path: str) -> rsa.RSAPrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    data = _read(path, KEY_ENV)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{KEY_ENV} {path}: encrypted; fleet needs an unencrypted key") from None
    except ValueError:
        raise ConfigError(f"{KEY_ENV} {path}: not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{KEY_ENV} {path}: not an RSA key (Celery signs with RSA)")
    return key


def _public_bytes(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _cert_id(cert: x509.Certificate) -> tuple[str, int]:
    # What Celery's CertStore keys certificates by: the issuer and the serial number.
    return (cert.issuer.rfc4514_string(), cert.serial_number)


# -- the worker's log: one line per refused message ----------------------------------

#: The loggers and message templates of Celery's consumer for a message it cannot
#: decode (a bad signature, an unknown signer: kombu's DecodeError) or will not take
#: (a content type outside accept_content: ContentDisallowed). Each logs several lines
#: with the body and a traceback; `RefusedMessageFilter` makes them one line.
CONSUMER_LOGGER = "celery.worker.consumer.consumer"
_DECODE_ERROR = "Can't decode message body"
_INVALID_TASK = "Received invalid task message"
_HEADER = re.compile(r"'(task|id)': '([^']{1,200})'")
_BAD_SIGNATURE = "its signature does not verify against its body (changed after signing, or forged)"
_WHY = (
    ("Unknown certificate", f"signed by a key whose certificate is not in {STORE_ENV}"),
    ("Expired certificate", "signed with an expired certificate"),
    ("Bad signature", _BAD_SIGNATURE),
    # Celery 5.7 reports a bad signature as "Unable to deserialize: TypeError(...)" (its
    # reraise_errors names the module cryptography.exceptions in an except clause); any
    # other failure to take a signed payload apart reads the same, and is refused alike.
    ("Unable to deserialize", _BAD_SIGNATURE),
)


def refused_message_line(exc: object, headers: str = "", *, signing: bool = False) -> str:
    """One log line for a refused task message: which (from Celery's headers text,
    made visible), why, and the library's own words. `signing`: the worker's."""
    text = make_visible_line(str(exc))[:300]
    untrusted = (
        "not signed: this worker accepts only signed messages"
        if signing
        else ("a content type this worker does not accept (JSON only)")
    )
    why = next(
        (reason for marker, reason in (*_WHY, ("untrusted content", untrusted)) if marker in text),
        "not a valid task message",
    )
    found = dict(_HEADER.findall(headers))
    which = " ".join(f"{k}={make_visible_line(found[k])}" for k in ("task", "id") if k in found)
    which = f" ({which})" if which else ""
    return f"fleet: refused a task message{which}: {why}; nothing run ({text})"


class RefusedMessageFilter(logging.Filter):
    """Rewrites Celery's multi-line "cannot decode"/"invalid task" records into the
    one line of `refused_message_line` (no body dump, no traceback). Install it on
    `CONSUMER_LOGGER`. `signing`: whether this worker takes signed messages only."""

    def __init__(self, *, signing: bool) -> None:
        super().__init__()
        self.signing = signing

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        args = record.args if isinstance(record.args, tuple) else ()
        if msg.startswith(_DECODE_ERROR) and args:
            headers = str(args[3]) if len(args) > 3 else ""
            line = refused_message_line(args[0], headers, signing=self.signing)
        elif msg.startswith(_INVALID_TASK) and args:
            line = refused_message_line(args[0], signing=self.signing)
        else:
            return True
        record.msg, record.args = line, ()
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.ERROR, "ERROR"
        return True
