"""The SQLite nonce log: redemptions shared by every connection to the file, and the
nonce key bound to the machine's boot so that a reboot forgets nothing unsafely."""

from __future__ import annotations

from pathlib import Path

from acme_ca.storage.nonce_log import SqliteNonceLog, boot_id


def test_a_nonce_is_redeemed_once_across_connections(tmp_path: Path) -> None:
    first, second = SqliteNonceLog(str(tmp_path / "ca.db")), SqliteNonceLog(str(tmp_path / "ca.db"))
    try:
        assert first.redeem("n1", 10)
        assert not second.redeem("n1", 10)
        assert second.redeem("n2", 10)
    finally:
        first.close()
        second.close()


def test_expired_redemptions_are_purged(tmp_path: Path) -> None:
    log = SqliteNonceLog(str(tmp_path / "ca.db"))
    try:
        assert log.redeem("old", 5)
        assert log.redeem("live", 50)
        assert log.purge(10) == 1
        assert log.redeem("old", 5)
        assert not log.redeem("live", 50)
    finally:
        log.close()


def test_boot_id_names_this_boot() -> None:
    assert boot_id() == boot_id()
    assert boot_id()
