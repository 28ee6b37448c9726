"""PostgreSQL roles on the real control plane with the real operator and a real PostgreSQL 15 server
(a throwaway cluster started by the tests: backends.Postgres)."""

from __future__ import annotations

import psycopg
import pytest
from helpers import Api, digest, wait_for

from workspace_secrets.credentials.providers.base import Scope


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def ref() -> dict:
    return {"kind": "Pod", "name": "not-yet"}


def login(pg, values: dict[str, bytes]) -> psycopg.Connection | str:
    """A session with the Secret's PG* values, or the class name of the error when refused."""
    try:
        return psycopg.connect(host=values["db.PGHOST"].decode(), port=int(values["db.PGPORT"]), dbname=values["db.PGDATABASE"].decode(),
                               user=values["db.PGUSER"].decode(), password=values["db.PGPASSWORD"].decode(), connect_timeout=5)
    except psycopg.OperationalError as exc:
        return type(exc).__name__


def can_log_in(pg, values: dict[str, bytes]) -> bool:
    session = login(pg, values)
    if isinstance(session, str):
        return False
    session.close()
    return True


def test_role_logs_in_with_its_grants_and_dies_with_the_workspace_secret(api, namespace, wso_operator, credential_backends,
                                                                        tmp_path_factory, monkeypatch):
    pg = credential_backends.postgres
    api.create_ws(namespace, "pg", {"user": "alice", "workspaceRef": ref(), "credentials": [{"name": "db", "provider": "postgres-app", "lifecycle": "WhileExists"}]})
    api.wait_condition(namespace, "pg")
    ws = api.get_ws(namespace, "pg")
    tag = Scope.of(namespace, "pg", ws["metadata"]["uid"], "db").tag
    values = api.secret_data(namespace, "pg")
    role = values["db.PGUSER"].decode()
    assert role == f"{tag}_g1" and values["db.PGDATABASE"] == b"app" and values["db.PGPORT"] == str(pg.port).encode()
    entry = ws["status"]["credentials"][0]
    assert entry["id"] == role and entry["expiresAt"]
    password = values["db.PGPASSWORD"]
    assert password.decode() not in str(ws) and password.decode() not in wso_operator.process.log_text()

    session = login(pg, values)
    assert not isinstance(session, str), f"the issued role cannot log in: {session}"
    assert session.execute("SELECT current_user, body FROM notes").fetchone() == (role, "hello from app")  # grants + membership
    with psycopg.connect(values["db.DATABASE_URL"].decode(), connect_timeout=5) as by_url:
        assert by_url.execute("SELECT current_user").fetchone() == (role,)
    # delivery Files: libpq itself reads the service file (PGSERVICEFILE + PGSERVICE, as in the pod's env) and
    # the pgpass file (mode 0600, as pod injection mounts it without fsGroup): the rotating role comes from files.
    files = tmp_path_factory.mktemp("pgfiles")
    (files / "pg_service.conf").write_bytes(values["db.pg_service.conf"])
    (files / "pgpass").write_bytes(values["db.pgpass"])
    (files / "pgpass").chmod(0o600)
    env = {e["name"]: e["key"] for e in ws["status"]["env"]}
    assert {"PGSERVICEFILE", "PGSERVICE", "PGPASSFILE"} <= set(env) and "PGPASSWORD" not in env and "PGUSER" not in env
    assert values[env["PGSERVICE"]] == b"db"
    monkeypatch.setenv("PGSERVICEFILE", str(files / "pg_service.conf"))
    with psycopg.connect(service="db", connect_timeout=5) as by_service:
        assert by_service.execute("SELECT current_user").fetchone() == (role,)
    monkeypatch.delenv("PGSERVICEFILE")
    monkeypatch.setenv("PGPASSFILE", str(files / "pgpass"))
    with psycopg.connect(host=values["db.PGHOST"].decode(), port=int(values["db.PGPORT"]), dbname="app", user=role, connect_timeout=5) as by_pgpass:
        assert by_pgpass.execute("SELECT current_user").fetchone() == (role,)
    with pg.superuser() as admin:
        stored, valid_until = admin.execute("SELECT rolpassword, rolvaliduntil FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    assert stored.startswith("SCRAM-SHA-256$") and valid_until is not None
    assert digest(stored.encode()) != digest(password)

    api.delete_ws(namespace, "pg")
    wait_for(lambda: api.get_ws(namespace, "pg") is None, timeout=60, what="WorkspaceSecret gone")
    # The open session is terminated (VALID UNTIL alone would have left it running), the role is gone.
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    assert login(pg, values) == "OperationalError"
    assert pg.roles(tag) == []
    wait_for(lambda: api.get_secret(namespace, "pg") is None, timeout=60, what="workspace Secret garbage-collected")


def test_rotation_writes_the_new_role_before_dropping_the_old(api, namespace, wso_operator, credential_backends):
    pg = credential_backends.postgres
    api.create_ws(namespace, "pgrot", {"user": "bob", "workspaceRef": ref(), "credentials": [
        {"name": "db", "provider": "postgres-app", "lifecycle": "WhileExists", "rotateAfter": "8s", "overlap": "8s"}]})
    api.wait_condition(namespace, "pgrot")
    old = api.secret_data(namespace, "pgrot")
    old_role = old["db.PGUSER"].decode()
    assert can_log_in(pg, old)
    wait_for(lambda: api.secret_data(namespace, "pgrot")["db.PGUSER"].decode() != old_role, timeout=40, what="rotated")
    new = api.secret_data(namespace, "pgrot")
    assert new["db.PGUSER"].decode() == old_role.replace("_g1", "_g2")
    assert can_log_in(pg, new)
    assert can_log_in(pg, old), "the old role stays valid during the overlap"
    status = api.get_ws(namespace, "pgrot")["status"]["credentials"][0]
    assert status["retiring"] == [old_role] and status["generation"] == 2
    wait_for(lambda: not can_log_in(pg, old), timeout=30, what="old role dropped after the overlap")
    assert old_role not in pg.roles() and can_log_in(pg, new)
    api.delete_ws(namespace, "pgrot")
    wait_for(lambda: not can_log_in(pg, new), timeout=60, what="role dropped on delete")


def test_the_orphan_sweep_drops_roles_no_workspace_secret_accounts_for(credential_backends):
    """The provider's `sweep` and tag-only revocation, as the operator's periodic orphan sweep drives them."""
    import asyncio
    from datetime import datetime, timezone

    from workspace_secrets.credentials.manager import CredentialManager, sweep_orphans
    from workspace_secrets.runtime.sensitive import Sensitive
    from workspace_secrets.credentials.providers import registry

    pg = credential_backends.postgres
    provider = registry.build("postgres-app", "postgresql", {"host": "127.0.0.1", "port": pg.port, "dbname": "app",
                                                             "grants": ["CONNECT ON DATABASE app"], "memberOf": ["app_readonly"]},
                              {"username": Sensitive(pg.admin_user), "password": Sensitive(pg.admin_password)}, None)
    orphan = Scope.of("gone-namespace", "gone", "0000", "db")
    issued = asyncio.run(provider.issue(orphan, {}, 1))
    session = pg.connect(issued.id, issued.values["PGPASSWORD"].reveal_text())
    others = {role.rsplit("_g", 1)[0] for role in pg.roles()} - {orphan.tag}

    async def expected_tags():
        return others  # every other scope still has its WorkspaceSecret
    manager = CredentialManager({"postgres-app": provider}, clock=lambda: datetime.now(timezone.utc))
    assert asyncio.run(sweep_orphans(manager, expected_tags)) == [orphan.tag]
    assert pg.roles(orphan.tag) == []
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
