"""fleet.pinning: a worker's own inventory decides where a host is."""

from __future__ import annotations

import os
from pathlib import Path

from fleet.inventory.hosts import Host
from fleet.pinning import pinned_host
from fleet.settings import Settings

BROKER = {"FLEET_BROKER_URL": "redis://127.0.0.1:1/0"}


def settings(path: Path | str) -> Settings:
    return Settings.load(env={**BROKER, "FLEET_WORKER_INVENTORY": str(path)})


def test_without_a_worker_inventory_or_embedded_the_message_host_is_taken(tmp_path: Path) -> None:
    host = Host("web01", "10.9.9.9")
    assert pinned_host(host, Settings.load(env=BROKER)) is host
    embedded = Settings.load(env={"FLEET_WORKER_INVENTORY": str(tmp_path / "x.yaml")})
    assert pinned_host(host, embedded) is host


def test_the_worker_file_wins_and_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "own.yaml"
    path.write_text("groups: {web: {hosts: {web01: {address: 10.0.0.1, port: 2222}}}}\n")
    found = pinned_host(Host("web01", "203.0.113.9", port=22, queue="eu"), settings(path))
    assert isinstance(found, Host)
    assert (found.address, found.port, found.queue) == ("10.0.0.1", 2222, "eu")
    path.write_text("groups: {web: {hosts: {web01: {address: 10.0.0.7}}}}\n")
    os.utime(path, ns=(1, 1))  # a new version even within the clock's resolution
    found = pinned_host(Host("web01", "203.0.113.9"), settings(path))
    assert isinstance(found, Host) and found.address == "10.0.0.7"


def test_unknown_names_and_an_unreadable_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "own.yaml"
    path.write_text("groups: {web: {hosts: {web01: {}}}}\n")
    reason = pinned_host(Host("db01", "10.0.0.2"), settings(path))
    assert isinstance(reason, str) and "'db01' is not in this worker's inventory" in reason
    reason = pinned_host(Host("web01", "x"), settings(tmp_path / "missing.yaml"))
    assert isinstance(reason, str) and "cannot be read" in reason
