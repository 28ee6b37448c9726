"""The PostgreSQL provider's statements, values, policy and error mapping (the real server is in tests/e2e)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import errors

from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.credentials.providers import postgresql as pg
from workspace_secrets.credentials.providers import registry
from workspace_secrets.credentials.providers.base import ProviderError, Scope

SCOPE = Scope.of("team-a", "alice-ws", "0d1e2f", "db")
ADMIN = {"username": Sensitive("wso_admin"), "password": Sensitive("admin-pw-not-in-messages")}
CONFIG = {"host": "db.internal", "port": 5433, "dbname": "app", "grants": ["CONNECT ON DATABASE app", "USAGE ON SCHEMA public"],
          "memberOf": ["app_readonly"], "passwordLifetime": "12h"}


def provider(**overrides) -> pg.PostgresRoleProvider:
    return registry.build("pg", "postgresql", {**CONFIG, **overrides}, ADMIN, None)


def test_registered_and_configured_from_yaml_fields():
    p = provider()
    assert isinstance(p, pg.PostgresRoleProvider) and p.type_name == "postgresql"
    assert set(p.env()) == {"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "DATABASE_URL"}
    assert p.validate({}) is None
    assert "takes no parameters" in p.validate({"role": "superuser"})


@pytest.mark.parametrize("admin, config, message", [
    ({"password": Sensitive("x")}, CONFIG, "lacks 'username'"),
    (ADMIN, {**CONFIG, "host": ""}, "config.host is required"),
    (ADMIN, {**CONFIG, "grants": ["SELECT ON t TO PUBLIC; DROP TABLE t"]}, "is not a privilege clause"),
    (ADMIN, {**CONFIG, "grants": ["ALL PRIVILEGES"]}, "is not a privilege clause"),
    (ADMIN, {**CONFIG, "passwordLifetime": "forever"}, "not a duration"),
])
def test_configuration_errors_name_the_field(admin, config, message):
    with pytest.raises(ValueError, match=message) as info:
        registry.build("pg", "postgresql", config, admin, None)
    assert "admin-pw" not in str(info.value)


def test_role_names_carry_the_scope_tag_and_generation():
    assert pg.role_name(SCOPE, 3) == f"{SCOPE.tag}_g3"
    import re
    assert re.fullmatch(pg.ROLE_PATTERN, pg.role_name(SCOPE, 12)).group(1) == SCOPE.tag
    assert len(pg.role_name(SCOPE, 99999)) <= 63  # PostgreSQL's NAMEDATALEN - 1


def test_create_statements_quote_the_role_and_send_only_the_verifier():
    until = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    statements = [s.as_string(None) for s in pg.create_statements(
        "wso-abc_g1", "SCRAM-SHA-256$4096:c2FsdA==$x:y", until, ["CONNECT ON DATABASE app"], ["app_readonly"], "it's ns/ws")]
    assert statements == [
        "CREATE ROLE \"wso-abc_g1\" LOGIN PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$x:y' VALID UNTIL '2026-12-01T12:00:00+00:00'",
        "COMMENT ON ROLE \"wso-abc_g1\" IS 'it''s ns/ws'",
        "GRANT CONNECT ON DATABASE app TO \"wso-abc_g1\"",
        "GRANT \"app_readonly\" TO \"wso-abc_g1\"",
    ]


def test_client_values_and_database_url():
    conn = pg.Connection("10.0.0.5", 5432, "app db", "admin", Sensitive("x"), sslmode="require", client_host="pg.example", client_port=6432)
    values = {k: v.reveal_text() for k, v in pg.client_values(conn, "wso-abc_g1", "p@ss/word").items()}
    assert values["PGHOST"] == "pg.example" and values["PGPORT"] == "6432" and values["PGDATABASE"] == "app db"
    assert values["DATABASE_URL"] == "postgresql://wso-abc_g1:p%40ss%2Fword@pg.example:6432/app%20db?sslmode=require"
    plain = pg.Connection("h", 5432, "app", "admin", Sensitive("x"))
    assert pg.client_values(plain, "r", "p")["DATABASE_URL"].reveal_text() == "postgresql://r:p@h:5432/app"


@pytest.mark.parametrize("exc, retryable, text", [
    (psycopg.OperationalError("connection to server at \"db\" (10.0.0.5), port 5432 failed: Connection refused"), True, "Connection refused"),
    (errors.InsufficientPrivilege("permission denied to create role"), False, "CREATEROLE"),
    (errors.InvalidPassword("password authentication failed for user \"wso_admin\""), False, "username/password were rejected"),
    (errors.SerializationFailure("could not serialize"), True, "40001"),
    (errors.AdminShutdown("terminating connection"), True, "57P01"),
    (errors.DuplicateObject("role exists"), False, "42710"),
])
def test_errors_map_to_retryable_or_not(exc, retryable, text):
    error = pg.provider_error("CREATE ROLE x", exc)
    assert isinstance(error, ProviderError) and error.retryable is retryable and text in str(error)


def test_errors_of_statements_carrying_a_secret_do_not_quote_the_server():
    exc = errors.SyntaxError("syntax error at or near 'SCRAM-SHA-256$4096:salt'")
    assert "SCRAM" in str(pg.provider_error("GRANT to x", exc))  # other statements quote the server...
    error = pg.provider_error("CREATE ROLE x", exc, quote_server=False)
    assert "SCRAM" not in str(error) and "42601" in str(error)  # ...the one with the verifier never does


def test_revoke_refuses_roles_outside_the_scope():
    p = provider()
    for foreign in ("postgres", "app_readonly", "wso-000000000000_g1", f"{SCOPE.tag}_gx"):
        with pytest.raises(ProviderError, match="refusing to drop role") as info:
            asyncio.run(p.revoke(SCOPE, foreign))
        assert info.value.retryable is False


class RecordingConnection:
    """Stands in for psycopg's AsyncConnection: records statements, fails the chosen one."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.statements: list[str] = []
        self.fail_at = fail_at
        self.pgconn = self
        self.encrypted: list[tuple[bytes, bytes, bytes]] = []

    def encrypt_password(self, password: bytes, user: bytes, algorithm: bytes) -> bytes:
        self.encrypted.append((password, user, algorithm))
        return b"SCRAM-SHA-256$4096:c2FsdA==$stored:server"

    async def execute(self, statement, params=None):
        self.statements.append(statement.as_string(None) if hasattr(statement, "as_string") else statement)
        if self.fail_at is not None and len(self.statements) - 1 == self.fail_at:
            raise errors.DuplicateObject("role \"x\" already exists; verifier SCRAM-SHA-256$4096:c2FsdA==$stored:server")

    def transaction(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


def test_issue_sends_a_scram_verifier_never_the_password(monkeypatch):
    monkeypatch.setattr(pg.secrets, "token_urlsafe", lambda n: "plain-password-value")
    connection = RecordingConnection()
    p = provider()
    p._clock = lambda: datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=timezone.utc)

    async def connect():
        return connection
    p._connect = connect
    issued = asyncio.run(p.issue(SCOPE, {}, 1))
    assert issued.id == f"{SCOPE.tag}_g1"
    assert issued.expires_at == datetime(2026, 11, 30, 0, 0, tzinfo=timezone.utc)
    assert issued.values["PGPASSWORD"].reveal_text() == "plain-password-value"
    assert connection.encrypted == [(b"plain-password-value", issued.id.encode(), b"scram-sha-256")]
    assert not any("plain-password-value" in s for s in connection.statements)
    assert connection.statements[0].startswith(f"CREATE ROLE \"{issued.id}\" LOGIN PASSWORD 'SCRAM-SHA-256$")
    assert connection.statements[2:] == [f"GRANT CONNECT ON DATABASE app TO \"{issued.id}\"",
                                         f"GRANT USAGE ON SCHEMA public TO \"{issued.id}\"", f"GRANT \"app_readonly\" TO \"{issued.id}\""]


def test_a_failed_create_names_the_role_but_no_secret(monkeypatch):
    monkeypatch.setattr(pg.secrets, "token_urlsafe", lambda n: "plain-password-value")
    p = provider()

    async def connect():
        return RecordingConnection(fail_at=0)
    p._connect = connect
    with pytest.raises(ProviderError) as info:
        asyncio.run(p.issue(SCOPE, {}, 2))
    message = str(info.value)
    assert f"CREATE ROLE {SCOPE.tag}_g2" in message and "42710" in message
    assert "plain-password-value" not in message and "SCRAM" not in message and "admin-pw" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_password_lifetime_default_is_a_day():
    p = registry.build("pg", "postgresql", {"host": "h", "dbname": "d"}, ADMIN, None)
    assert p._lifetime == timedelta(hours=24)
