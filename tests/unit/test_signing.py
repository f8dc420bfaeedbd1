"""Message signing: keys and certificates (`fleet keys init`), the settings' checks, the
Celery settings a site cannot weaken, and the one log line per refused message."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fleet import celery_config
from fleet.errors import ConfigError, UsageError
from fleet.settings import Settings
from fleet.signing import (
    KEY_BITS,
    KeyPair,
    RefusedMessageFilter,
    check_worker_signing,
    create_keys,
    signer_identity,
    signing_config,
)

BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    base = tmp_path_factory.mktemp("keys")
    return {name: create_keys(base / name, name, bits=2048) for name in ("alice", "bob", "mallory")}


def _store(tmp_path: Path, *pairs: KeyPair) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    for pair in pairs:
        shutil.copy(pair.cert, store / pair.cert.name)
    return store


def _settings(**values: str) -> Settings:
    return Settings.load(broker_url=BROKER, **values)


def test_keys_init_writes_a_private_key_and_a_self_signed_certificate(tmp_path: Path) -> None:
    pair = create_keys(tmp_path / "new" / "keys", "submit-1")
    assert stat.S_IMODE((tmp_path / "new" / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    assert pair.key.name == "submit-1.key" and pair.cert.name == "submit-1.pem"
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == KEY_BITS
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "submit-1" and cert.issuer == cert.subject
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=365)


def test_keys_init_overwrites_nothing(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    alice = keys["alice"]
    before = alice.key.read_bytes()
    with pytest.raises(UsageError, match=r"alice\.key: already exists; not overwritten"):
        create_keys(alice.key.parent, "alice", bits=2048)
    assert alice.key.read_bytes() == before
    # Only the certificate there: the key is not written either.
    lone = tmp_path / "lone"
    lone.mkdir(mode=0o700)
    (lone / "x.pem").write_text("mine")
    with pytest.raises(UsageError, match=r"x\.pem: already exists"):
        create_keys(lone, "x", bits=2048)
    assert sorted(p.name for p in lone.iterdir()) == ["x.pem"]


def test_keys_init_refuses_a_directory_others_can_enter_and_odd_names(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with pytest.raises(UsageError, match=r"others can enter it \(mode 0755\)"):
        create_keys(shared, "a", bits=2048)
    for bad in ("../evil", "", ".hidden", "a/b", "x" * 65):
        with pytest.raises(UsageError, match="--name"):
            create_keys(tmp_path / "private", bad, bits=2048)


def test_signing_is_off_when_nothing_is_set_and_in_embedded_mode(
    keys: dict[str, KeyPair],
) -> None:
    assert signing_config(_settings()) is None
    assert signer_identity(_settings()) is None
    embedded = Settings.load(signing_key=str(keys["alice"].key))  # no broker: untouched
    assert embedded.is_embedded and signing_config(embedded) is None


def test_a_complete_set_up_is_checked_and_names_its_signer(
    keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    alice = keys["alice"]
    store = _store(tmp_path, alice, keys["bob"])
    settings = _settings(
        signing_key=str(alice.key), signing_cert=str(alice.cert), signing_cert_store=str(store)
    )
    config = signing_config(settings)
    assert config is not None and config.signer == "alice"
    assert signer_identity(settings) == "alice"
    celery = config.celery_settings()
    assert celery["task_serializer"] == "auth" and celery["accept_content"] == ["auth"]
    assert celery["security_digest"] == "sha256"
    assert celery["security_cert_store"] == str(store)
    check_worker_signing(config)
    # A submitter needs no store: its own certificate stands in for Celery.
    submitter = signing_config(_settings(signing_key=str(alice.key), signing_cert=str(alice.cert)))
    assert submitter is not None and submitter.celery_settings()["security_cert_store"] == str(
        alice.cert
    )
    with pytest.raises(ConfigError, match="FLEET_SIGNING_CERT_STORE is not set"):
        check_worker_signing(submitter)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"signing_key": "K"}, "FLEET_SIGNING_CERT is not set, but FLEET_SIGNING_KEY is"),
        ({"signing_cert": "C"}, "FLEET_SIGNING_KEY is not set, but FLEET_SIGNING_CERT is"),
        ({"signing_cert_store": "S"}, "FLEET_SIGNING_KEY is not set"),
    ],
)
def test_a_half_configuration_is_refused_naming_the_setting(
    given: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        signing_config(_settings(**given))


def test_bad_files_are_refused_naming_setting_and_file(
    keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    alice, bob = keys["alice"], keys["bob"]

    def refused(**values: str) -> str:
        with pytest.raises(ConfigError) as info:
            signing_config(_settings(**values))
        return str(info.value)

    missing = str(tmp_path / "nope.key")
    assert refused(signing_key=missing, signing_cert=str(alice.cert)) == (
        f"FLEET_SIGNING_KEY {missing}: cannot read: No such file or directory"
    )
    assert "not a PEM private key" in refused(
        signing_key=str(alice.cert), signing_cert=str(alice.cert)
    )
    assert refused(signing_key=str(alice.key), signing_cert=str(alice.key)) == (
        f"FLEET_SIGNING_CERT {alice.key}: not a PEM X.509 certificate"
    )
    assert refused(signing_key=str(bob.key), signing_cert=str(alice.cert)) == (
        f"FLEET_SIGNING_KEY {bob.key}: not the key of the certificate "
        f"FLEET_SIGNING_CERT {alice.cert}"
    )
    pair = {"signing_key": str(alice.key), "signing_cert": str(alice.cert)}
    gone = str(tmp_path / "gone")
    assert refused(**pair, signing_cert_store=gone) == (
        f"FLEET_SIGNING_CERT_STORE {gone}: no such directory"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no certificate" in refused(**pair, signing_cert_store=str(empty))
    store = _store(tmp_path, alice)
    (store / "README").write_text("not a certificate")
    assert refused(**pair, signing_cert_store=str(store)) == (
        f"FLEET_SIGNING_CERT_STORE {store / 'README'}: not a PEM X.509 certificate"
    )
    (store / "README").unlink()
    shutil.copy(alice.cert, store / "copy.pem")
    assert "the same certificate as" in refused(**pair, signing_cert_store=str(store))


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "old.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "old.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match=r"old\.pem: expired on"):
        signing_config(
            _settings(signing_key=str(tmp_path / "old.key"), signing_cert=str(tmp_path / "old.pem"))
        )


def test_a_worker_store_without_its_own_certificate_is_refused(
    keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    alice = keys["alice"]
    store = _store(tmp_path, keys["bob"])
    config = signing_config(
        _settings(
            signing_key=str(alice.key), signing_cert=str(alice.cert), signing_cert_store=str(store)
        )
    )
    assert config is not None
    with pytest.raises(ConfigError, match="does not hold this worker's own certificate"):
        check_worker_signing(config)


SIGNED = {
    "task_serializer": "auth",
    "accept_content": ["auth"],
    "security_key": "/k",
    "security_certificate": "/c",
    "security_cert_store": "/s",
    "security_digest": "sha256",
}


def test_a_site_cannot_switch_signing_off_on_a_signing_worker() -> None:
    site = {
        "task_serializer": "json",
        "accept_content": ["json", "auth"],
        "security_cert_store": "/elsewhere",
        "security_key": "/other.key",
    }
    config, refused = celery_config.resolve(site, result_expires=60, signing=SIGNED)
    assert config["task_serializer"] == "auth" and config["accept_content"] == ["auth"]
    assert config["security_cert_store"] == "/s" and config["security_key"] == "/k"
    assert config["result_accept_content"] == ["json"]  # results stay JSON
    assert sorted(r.name for r in refused) == sorted(site)


def test_the_auth_serializer_is_refused_when_signing_is_off() -> None:
    site = {"task_serializer": "auth", "accept_content": ["auth"], "security_key": "/k"}
    config, refused = celery_config.resolve(site, result_expires=60)
    assert config["task_serializer"] == "json" and config["accept_content"] == ["json"]
    assert "security_key" not in config
    assert sorted(r.name for r in refused) == sorted(site)
    assert "FLEET_SIGNING_KEY" in next(r.why for r in refused if r.name == "security_key")


def test_a_half_configuration_fails_closed_and_app_for_raises_it(
    keys: dict[str, KeyPair],
) -> None:
    from fleet.celery import app_for, create_app

    settings = _settings(signing_key=str(keys["alice"].key))
    built = create_app(settings)
    assert isinstance(built.fleet_config_error, ConfigError)
    assert built.conf.task_serializer == "auth"  # never registered: nothing is sent
    assert built.conf.accept_content == ["application/x-fleet-signing-misconfigured"]
    with pytest.raises(ConfigError, match="FLEET_SIGNING_CERT is not set"):
        app_for(settings)


def _record(msg: str, args: tuple[object, ...]) -> logging.LogRecord:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    return logging.LogRecord(
        "celery.worker.consumer.consumer", logging.CRITICAL, __file__, 1, msg, args, exc_info
    )


def test_a_refused_message_is_one_line_without_traceback() -> None:
    from celery.worker.consumer.consumer import INVALID_TASK_ERROR, MESSAGE_DECODE_ERROR

    handler_filter = RefusedMessageFilter(signing=True)
    headers = "{'task': 'fleet.run_on_host', 'id': 'abc\\x1b[2J', 'argsrepr': '...'}"
    decode = _record(
        MESSAGE_DECODE_ERROR,
        (
            Exception("Unknown certificate: 'mallory 123'"),
            "application/data",
            "utf-8",
            headers,
            "body " * 200,
        ),
    )
    assert handler_filter.filter(decode)
    line = decode.getMessage()
    assert "\n" not in line and decode.exc_info is None and decode.levelno == logging.ERROR
    assert line.startswith("fleet: refused a task message (task=fleet.run_on_host id=abc")
    assert "not in FLEET_SIGNING_CERT_STORE" in line and "body body" not in line
    assert "\x1b" not in line
    tampered = _record(
        MESSAGE_DECODE_ERROR, (Exception("Bad signature: InvalidSignature()"), "", "", "{}", "")
    )
    handler_filter.filter(tampered)
    assert "signature does not verify against its body" in tampered.getMessage()
    # Celery 5.7 words a bad signature so (its reraise_errors catches a module).
    bug = "Unable to deserialize: TypeError('catching classes that do not inherit from ...')"
    celery_words = _record(MESSAGE_DECODE_ERROR, (Exception(bug), "", "", "{}", ""))
    handler_filter.filter(celery_words)
    assert "signature does not verify against its body" in celery_words.getMessage()
    unsigned = _record(
        INVALID_TASK_ERROR,
        (Exception("Refusing to deserialize untrusted content of type json"), "{...}"),
    )
    handler_filter.filter(unsigned)
    assert "not signed" in unsigned.getMessage() and "untrusted content" in unsigned.getMessage()
    pickled = _record(
        INVALID_TASK_ERROR, (Exception("Refusing to deserialize untrusted content of type pickle"),)
    )
    RefusedMessageFilter(signing=False).filter(pickled)
    assert "does not accept (JSON only)" in pickled.getMessage()
    other = _record("Something else: %s", ("x",))
    handler_filter.filter(other)
    assert other.getMessage() == "Something else: x" and other.exc_info is not None


def test_fleet_keys_init_prints_the_environment_lines_and_overwrites_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleet.cli import main

    directory = tmp_path / "keys"
    assert main(["keys", "init", str(directory), "--name", "ops1"]) == 0
    out = capsys.readouterr().out
    assert f"export FLEET_SIGNING_KEY={directory / 'ops1.key'}" in out
    assert f"export FLEET_SIGNING_CERT={directory / 'ops1.pem'}" in out
    assert "export FLEET_SIGNING_CERT_STORE=" in out
    assert "into every worker's FLEET_SIGNING_CERT_STORE directory" in out
    key = (directory / "ops1.key").read_bytes()
    assert main(["keys", "init", str(directory), "--name", "ops1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"fleet: {directory / 'ops1.key'}: already exists; not overwritten"
    ]
    assert (directory / "ops1.key").read_bytes() == key
