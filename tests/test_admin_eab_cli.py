"""`acme-ca admin eab create|list|revoke`, and the policy settings of the configuration."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from acme_ca.cli import main
from acme_ca.config import ConfigError, load_settings


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    code, out = _run(capsys, "admin", "eab", "create", "--label", "team-a", "--json", *data)
    assert code == 0
    created = json.loads(out)
    assert set(created) == {"kid", "hmac_key"}
    key = base64.urlsafe_b64decode(created["hmac_key"] + "=" * (-len(created["hmac_key"]) % 4))
    assert len(key) == 32
    assert "=" not in created["hmac_key"]  # base64url without padding, as clients expect

    code, out = _run(capsys, "admin", "eab", "create", *data)
    assert code == 0
    assert out.startswith("kid: kid-")
    assert "hmac_key: " in out

    code, out = _run(capsys, "admin", "eab", "list", "--json", *data)
    listed = json.loads(out)
    assert [k["label"] for k in listed] == ["team-a", None]
    assert listed[0]["kid"] == created["kid"]
    assert listed[0]["revoked"] is None
    assert listed[0]["accounts_bound"] == 0

    code, out = _run(capsys, "admin", "eab", "revoke", created["kid"], *data)
    assert code == 0
    code, out = _run(capsys, "admin", "eab", "list", *data)
    assert f"{created['kid']}\trevoked" in out
    assert "label: team-a" in out
    # Revoking twice, or an unknown key, is an error.
    assert main(["admin", "eab", "revoke", created["kid"], *data]) == 1
    assert main(["admin", "eab", "revoke", "kid-nonesuch", *data]) == 1


def test_policy_settings_from_toml_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "acme-ca.toml"
    config.write_text(
        """
rate_limits = "letsencrypt"
new_authz = true
eab_bind_many = true
caa_recheck_hours = 2
caa_identities = ["pki.corp.example"]
default_profile = "tlsserver"

[rate_limit_rules]
new_orders_per_account = { count = 1000, period = "3h" }

[rate_limit_rules.accounts.abc]
new_orders_per_account = "off"

[profiles.internal]
validity_days = 30
description = "30-day internal"
"""
    )
    settings = load_settings(config_file=config, environ={})
    assert settings.rate_limits == "letsencrypt"
    assert settings.new_authz
    assert settings.eab_bind_many
    assert settings.caa_recheck_hours == 2
    assert settings.rate_limit_rules["accounts"] == {"abc": {"new_orders_per_account": "off"}}
    assert settings.profiles == {
        "internal": {"validity_days": 30, "description": "30-day internal"}
    }
    env = {"ACME_CA_PROFILES": '{"x": {"validity_days": 1}}', "ACME_CA_RATE_LIMITS": "off"}
    from_env = load_settings(environ=env)
    assert from_env.profiles == {"x": {"validity_days": 1}}
    assert from_env.rate_limits == "off"
    with pytest.raises(ConfigError, match="rate_limits"):
        load_settings(environ={"ACME_CA_RATE_LIMITS": "strict"})
    with pytest.raises(ConfigError, match="JSON object"):
        load_settings(environ={"ACME_CA_PROFILES": "{nope"})


def test_a_new_hmac_key_never_reads_as_a_command_line_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from acme_ca.ra import eab

    dash = [bytes([0xF8]) + bytes(31), bytes([0xFB]) + bytes(31)]  # base64url "-..."
    assert all(base64.urlsafe_b64encode(d).startswith(b"-") for d in dash)
    draws = iter([*dash, bytes([0xFC]) + bytes(31)])  # "_..." is fine
    monkeypatch.setattr("acme_ca.ra.eab.secrets.token_bytes", lambda n: next(draws))
    assert eab.new_hmac_key() == bytes([0xFC]) + bytes(31)
