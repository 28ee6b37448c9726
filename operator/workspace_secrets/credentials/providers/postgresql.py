"""PostgreSQL login roles: one role per issued credential, `<tag>_g<generation>`, with the platform's grants.

The role name starts with the scope tag, so `list` (pg_roles) finds every role minted for an entry --
including one created just before a crash -- and the orphan sweep finds roles whose workspace is gone.
Revocation does what `VALID UNTIL` alone does not: it ends the role's open sessions (NOLOGIN first, so no
new one starts, then pg_terminate_backend), then drops the role, handing anything it created to the
admin role (REASSIGN OWNED) so a workspace's deletion never destroys data.

The password never reaches the server in clear text: it is sent as a SCRAM-SHA-256 verifier computed by
libpq on our side (what psql's \\password does), so not even a server's statement log can show it.
"""

from __future__ import annotations

import re
import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from workspace_secrets.api.durations import parse_duration
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.credentials.providers.base import FileContext, FileRef, Issued, ProviderError, Scope

ROLE_PATTERN = r"^(wso-[0-9a-f]{12})_g[0-9]+$"  # roles this operator creates (Scope tags + generation)
VALUE_KEYS = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "DATABASE_URL")
_FORBIDDEN_IN_GRANT = (";", "--", "/*")
# SQLSTATE classes worth retrying: connection, insufficient resources, operator intervention (shutdown),
# transaction rollback (serialization failure, deadlock), lock not available (55P03).
_RETRYABLE_CLASSES = ("08", "53", "57", "40")
_RETRYABLE_STATES = ("55P03", "55006")


@dataclass(frozen=True)
class Connection:
    """Where and as whom the operator connects; and the address workspaces are told to use."""

    host: str
    port: int
    dbname: str
    user: str
    password: Sensitive
    sslmode: str = "prefer"
    client_host: str = ""
    client_port: int = 0
    connect_timeout: int = 10

    def kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user,
                "password": self.password.reveal_text(), "sslmode": self.sslmode, "connect_timeout": self.connect_timeout,
                "application_name": "workspace-secrets-operator"}


def role_name(scope: Scope, generation: int) -> str:
    return f"{scope.tag}_g{generation}"


def check_grant(grant: str) -> str:
    """A configured grant is SQL written by the platform (trusted), but one statement only."""
    text = " ".join(grant.split())
    if not text or any(token in text for token in _FORBIDDEN_IN_GRANT) or not re.search(r"\sON\s", f" {text} ", re.I):
        raise ValueError(f"grants: {grant!r} is not a privilege clause like 'SELECT ON ALL TABLES IN SCHEMA public' "
                         "(one clause, no ';' or comments; the operator adds 'GRANT ... TO <role>')")
    return text


def create_statements(role: str, verifier: str, valid_until: datetime, grants: Sequence[str], member_of: Sequence[str],
                      comment: str) -> list[Any]:
    """The statements that create one credential, run in one transaction (all or nothing)."""
    from psycopg import sql

    ident = sql.Identifier(role)
    # psycopg cannot bind parameters in utility statements such as CREATE ROLE: compose literals instead.
    statements: list[Any] = [
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {}").format(
            ident, sql.Literal(verifier), sql.Literal(valid_until.astimezone(timezone.utc).isoformat())),
        sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(comment)),
    ]
    statements += [sql.SQL("GRANT {} TO {}").format(sql.SQL(grant), ident) for grant in grants]
    statements += [sql.SQL("GRANT {} TO {}").format(sql.Identifier(member), ident) for member in member_of]
    return statements


def client_values(conn: Connection, role: str, password: str) -> dict[str, Sensitive]:
    host, port = conn.client_host or conn.host, conn.client_port or conn.port
    quote = urllib.parse.quote
    url = f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(conn.dbname, safe='')}"
    if conn.sslmode != "prefer":
        url += f"?sslmode={quote(conn.sslmode)}"
    return {"PGHOST": Sensitive(host), "PGPORT": Sensitive(str(port)), "PGDATABASE": Sensitive(conn.dbname),
            "PGUSER": Sensitive(role), "PGPASSWORD": Sensitive(password), "DATABASE_URL": Sensitive(url)}


def _pgpass_field(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def client_files(values: Mapping[str, Sensitive], sslmode: str, service: str) -> dict[str, Sensitive]:
    """The libpq files: `pgpass` (PGPASSFILE; libpq ignores it unless its mode is 0600 or stricter) and
    `pg_service.conf` (PGSERVICEFILE) with one service named after the entry (PGSERVICE) that carries the whole
    connection, the rotating role name and its password included, so `psql` with no arguments follows rotations.
    Also `PGSERVICE` itself: the service name, which never changes."""
    if any(k not in values for k in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD")):
        return {}
    host, port, db, user, password = (values[k].reveal_text().replace("\n", "").replace("\r", "")
                                      for k in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD"))
    pgpass = ":".join(_pgpass_field(f) for f in (host, port, db, user, password)) + "\n"
    conf = (f"[{service}]\nhost={host}\nport={port}\ndbname={db}\nuser={user}\npassword={password}\n"
            f"sslmode={sslmode}\n")
    return {"pgpass": Sensitive(pgpass), "pg_service.conf": Sensitive(conf), "PGSERVICE": Sensitive(service)}


def provider_error(action: str, exc: Exception, *, quote_server: bool = True) -> ProviderError:
    """Map a psycopg error without any secret: the SQLSTATE, the error class and (unless the statement
    carried a secret) the server's primary message, which names roles and objects but no values."""
    import psycopg

    sqlstate = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, psycopg.OperationalError) and not sqlstate:
        # Connection-level failure (refused, timeout, DNS): libpq's message names host, port and user only.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ProviderError(f"PostgreSQL {action} failed: {first_line}", retryable=True)
    detail = ""
    if quote_server and isinstance(exc, psycopg.Error):
        primary = exc.diag.message_primary or (str(exc).strip().splitlines() or [""])[0]
        detail = f": {primary}" if primary else ""
    retryable = sqlstate[:2] in _RETRYABLE_CLASSES or sqlstate in _RETRYABLE_STATES or not sqlstate
    hint = " (check the admin role's privileges: CREATEROLE, pg_signal_backend, grant options)" if sqlstate == "42501" else ""
    if sqlstate == "28P01":
        hint = " (the admin credentials Secret's username/password were rejected)"
        retryable = False
    return ProviderError(f"PostgreSQL {action} failed: {sqlstate or '-'} {type(exc).__name__}{detail}{hint}", retryable=retryable)


class PostgresRoleProvider:
    type_name: ClassVar[str] = "postgresql"
    access = None  # the platform's allow rule (credentials.ledger.AccessRule), set by credentials/setup.py

    def __init__(self, name: str, conn: Connection, *, grants: Sequence[str], member_of: Sequence[str],
                 password_lifetime: timedelta, reassign_owned_to: str | None = None, clock: Any = None) -> None:
        self.name = name
        self._conn = conn
        self._grants = [check_grant(g) for g in grants]
        self._member_of = list(member_of)
        self._lifetime = password_lifetime
        self._reassign_to = reassign_owned_to
        self._clock = clock or (lambda: datetime.now(timezone.utc))

    @classmethod
    def from_config(cls, *, name: str, config: Mapping[str, Any], admin: Mapping[str, Sensitive], kube: Any) -> PostgresRoleProvider:
        import psycopg  # noqa: F401 - imported only when a postgresql provider is configured; fail early if missing

        try:
            user, password = admin["username"].reveal_text(), admin["password"]
        except KeyError as exc:
            raise ValueError(f"admin credentials Secret lacks {exc.args[0]!r} (keys: username, password)") from None
        for required in ("host", "dbname"):
            if not config.get(required):
                raise ValueError(f"config.{required} is required")
        conn = Connection(
            host=str(config["host"]), port=int(config.get("port", 5432)), dbname=str(config["dbname"]),
            user=user, password=password, sslmode=str(config.get("sslmode", "prefer")),
            client_host=str(config.get("clientHost", "")), client_port=int(config.get("clientPort", 0)),
            connect_timeout=int(config.get("connectTimeoutSeconds", 10)),
        )
        lifetime = parse_duration(str(config.get("passwordLifetime", "24h")))
        return cls(name, conn, grants=list(config.get("grants", [])), member_of=list(config.get("memberOf", [])),
                   password_lifetime=lifetime, reassign_owned_to=config.get("reassignOwnedTo"))

    def env(self) -> Mapping[str, str]:
        return {key: key for key in VALUE_KEYS}

    def file_env(self) -> Mapping[str, str | FileRef]:
        return {"PGSERVICEFILE": FileRef("pg_service.conf"), "PGSERVICE": "PGSERVICE", "PGPASSFILE": FileRef("pgpass")}

    def files(self, values: Mapping[str, Sensitive], where: FileContext) -> Mapping[str, Sensitive]:
        return client_files(values, self._conn.sslmode, where.entry)

    def validate(self, parameters: Mapping[str, str]) -> str | None:
        if parameters:
            return (f"postgresql takes no parameters (the platform's provider configuration sets the grants), "
                    f"got {', '.join(sorted(parameters))}")
        return None

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(**self._conn.kwargs(), autocommit=True)

    async def issue(self, scope: Scope, parameters: Mapping[str, str], generation: int) -> Issued:
        role = role_name(scope, generation)
        password = secrets.token_urlsafe(32)
        valid_until = (self._clock() + self._lifetime).replace(microsecond=0)
        try:
            conn = await self._connect()
        except Exception as exc:
            raise provider_error("connect", exc) from None
        try:
            async with conn:
                # SCRAM verifier computed locally by libpq (no round trip when the algorithm is given).
                verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
                statements = create_statements(role, verifier, valid_until, self._grants, self._member_of, scope.description)
                async with conn.transaction():
                    for index, statement in enumerate(statements):
                        try:
                            await conn.execute(statement)
                        except Exception as exc:
                            # The first statement carries the verifier: never quote the server about it.
                            raise provider_error(f"CREATE ROLE {role}" if index == 0 else f"GRANT to {role}", exc,
                                                 quote_server=index != 0) from None
        except ProviderError:
            raise
        except Exception as exc:
            raise provider_error(f"CREATE ROLE {role}", exc, quote_server=False) from None
        return Issued(id=role, values=client_values(self._conn, role, password), expires_at=valid_until)

    async def revoke(self, scope: Scope, credential_id: str) -> None:
        if not (scope.tag and credential_id.startswith(f"{scope.tag}_g") and re.fullmatch(ROLE_PATTERN, credential_id)):
            raise ProviderError(f"refusing to drop role {credential_id!r}: not a role of scope {scope.tag!r}", retryable=False)
        from psycopg import errors, sql

        ident = sql.Identifier(credential_id)
        step = "connect"
        try:
            async with await self._connect() as conn:
                step = "look up role"
                row = await (await conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (credential_id,))).fetchone()
                if row is None:
                    return  # already gone: revoked
                oid = row[0]
                step = "ALTER ROLE NOLOGIN"
                await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
                step = "terminate sessions"
                await self._terminate(conn, oid)
                # Its grants (and anything it created) depend on it: hand owned objects to the admin role, drop
                # its privileges, then the role. REASSIGN/DROP OWNED need the role's privileges, hence the
                # membership, which DROP ROLE removes again. One transaction: all or nothing.
                step = "REASSIGN OWNED / DROP OWNED / DROP ROLE"
                target = sql.Identifier(self._reassign_to) if self._reassign_to else sql.SQL("CURRENT_USER")
                async with conn.transaction():
                    await conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
                    await conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(ident, target))
                    await conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                    await conn.execute(sql.SQL("DROP ROLE {}").format(ident))
                step = "terminate sessions"
                await self._terminate(conn, oid)  # a login that raced the NOLOGIN
        except errors.UndefinedObject:
            return  # dropped concurrently
        except ProviderError:
            raise
        except Exception as exc:
            raise provider_error(f"{step} of role {credential_id}", exc) from None

    @staticmethod
    async def _terminate(conn: Any, oid: int) -> None:
        # pg_terminate_backend(pid, timeout) waits (up to 5 s) until the backend has really exited.
        await conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usesysid = %s AND pid <> pg_backend_pid()",
                           (oid,))

    async def list(self, scope: Scope) -> list[str]:
        pattern = f"^{re.escape(scope.tag)}_g[0-9]+$"
        try:
            async with await self._connect() as conn:
                cursor = await conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) AND rolname ~ %s ORDER BY rolname",
                                            (f"{scope.tag}_g", pattern))
                return [row[0] for row in await cursor.fetchall()]
        except Exception as exc:
            raise provider_error("list roles", exc) from None

    async def release(self, scope: Scope) -> None:
        return None  # nothing per scope besides the roles

    async def sweep(self) -> list[str]:
        try:
            async with await self._connect() as conn:
                cursor = await conn.execute("SELECT DISTINCT substring(rolname from %s) FROM pg_roles WHERE rolname ~ %s",
                                            (ROLE_PATTERN, ROLE_PATTERN))
                return sorted(row[0] for row in await cursor.fetchall())
        except Exception as exc:
            raise provider_error("list roles", exc) from None
