"""Credential backends started by the tests: real servers where they exist locally (moto's server mode
for AWS IAM/STS, a throwaway PostgreSQL cluster), faithful fakes of the published API contracts where none
does (GCP IAM, Twilio IAM: tests/fakes/), and the operator's provider configuration pointing at them."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from fakes.gcp_iam import FakeGcpIam
from fakes.twilio import FakeTwilio
from http_proxy import FaultProxy
from operator_process import free_port

ADMIN_NAMESPACE = "wso-system"


@dataclass
class Moto:
    """moto in server mode: a real HTTP server speaking the IAM/STS wire protocol, checking access keys."""

    port: int
    process: subprocess.Popen
    admin_key_id: str = ""
    admin_secret: str = field(default="", repr=False)  # pytest prints fixtures' reprs in failure reports
    proxy: FaultProxy | None = None
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, service: str, key_id: str, secret: str):
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret)

    def admin(self):
        return self.client("iam", self.admin_key_id, self.admin_secret)

    @classmethod
    def start(cls, log_dir: Path, *, host: str = "127.0.0.1", fault_proxy: bool = True):
        """Start moto on `host` (loopback; the node IP for pods) and bootstrap an admin key. With `fault_proxy`,
        a FaultProxy in front of it lets tests cut the operator's connection."""
        port = free_port(host)
        # After this many unauthenticated calls (our admin bootstrap below), moto checks every request's
        # access key against its IAM state: a revoked key really fails with InvalidClientTokenId.
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        moto_server = Path(sys.executable).with_name("moto_server")
        with open(log_dir / "moto.log", "wb") as log:
            process = subprocess.Popen([str(moto_server), "-H", host, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{host}:{port}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.terminate()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        moto = cls(port, process, host=host)
        bootstrap = moto.client("iam", "bootstrap", "bootstrap")
        bootstrap.create_user(UserName="wso-admin")
        bootstrap.put_user_policy(UserName="wso-admin", PolicyName="all",
                                  PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
        key = bootstrap.create_access_key(UserName="wso-admin")["AccessKey"]
        moto.admin_key_id, moto.admin_secret = key["AccessKeyId"], key["SecretAccessKey"]
        if fault_proxy:
            moto.proxy = FaultProxy(host, port).start()
        return moto

    def stop(self) -> None:
        if self.proxy:
            self.proxy.stop()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Backends:
    config_path: Path
    moto: Moto
    providers: dict = field(default_factory=dict)
    postgres: Postgres | None = None
    gcp: FakeGcpIam | None = field(default=None, repr=False)  # hold minted keys
    twilio: FakeTwilio | None = field(default=None, repr=False)


#: The allow rule of every test provider: the test namespaces (conftest's `wso-e2e-<random>`), every user.
#: The e2e operator serves other namespaces too (bench, helm, attacks): they configure their own providers.
E2E_ALLOW = '{namespaces: ["wso-e2e-*"]}'
#: The audience the test control plane's API server accepts (--api-audiences): tokens for it authenticate.
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def extra_providers_yaml(postgres: Postgres | None = None, gcp: FakeGcpIam | None = None, twilio: FakeTwilio | None = None) -> str:
    """Entries to append to providers_yaml()'s list, for the servers and fakes that were started."""
    return "".join(entry for entry in (
        postgres and f"""\
  - name: postgres-app
    allow: {E2E_ALLOW}
    type: postgresql
    credentialsSecret: postgres-admin
    config:
      host: 127.0.0.1
      port: {postgres.port}
      dbname: app
      grants: ["CONNECT ON DATABASE app", "USAGE ON SCHEMA public"]
      memberOf: [app_readonly]
      passwordLifetime: 1h
""",
        gcp and f"""\
  - name: gcp-dev
    allow: {E2E_ALLOW}
    type: gcp-service-account-key
    credentialsSecret: gcp-admin
    config:
      project: {gcp.project}
      endpoint: {gcp.url}
""",
        twilio and f"""\
  - name: twilio-dev
    allow: {E2E_ALLOW}
    type: twilio-api-key
    credentialsSecret: twilio-admin
    config:
      baseURL: {twilio.url}
""") if entry)


def admin_secrets(postgres: Postgres | None = None, gcp_admin_key: bytes | None = None,
                  twilio: FakeTwilio | None = None) -> dict[str, dict[str, str]]:
    """The providers' admin credential Secrets (name -> stringData) for the operator's namespace."""
    out = {}
    if postgres:
        out["postgres-admin"] = {"username": postgres.admin_user, "password": postgres.admin_password}
    if gcp_admin_key:
        out["gcp-admin"] = {"key.json": gcp_admin_key.decode()}
    if twilio:
        out["twilio-admin"] = {"TWILIO_ACCOUNT_SID": twilio.account_sid, "TWILIO_AUTH_TOKEN": twilio.auth_token}
    return out


def providers_yaml(moto: Moto) -> str:
    assert moto.proxy is not None
    return f"""\
providers:
  - name: cluster-tokens
    type: kubernetes-token
    allow: {E2E_ALLOW}
    config:
      allowedServiceAccounts: ["ci-*", "deployer"]
      audiences: ["{API_AUDIENCE}", "https://ci.example.com"]
      maxExpirationSeconds: 7200
  - name: unallowed-tokens   # no allow rule: nobody may use it (test_credentials.py)
    type: kubernetes-token
    config:
      allowedServiceAccounts: ["ci-*"]
      audiences: ["{API_AUDIENCE}"]
  - name: aws-dev
    allow: {E2E_ALLOW}
    type: aws-iam
    credentialsSecret: aws-admin
    config:
      endpointURL: http://127.0.0.1:{moto.proxy.port}
      region: us-east-1
"""


def _pg_bin() -> Path:
    """WSO_PG_BIN, else Debian's PostgreSQL server binaries (15 preferred: what the tests are written against)."""
    if os.environ.get("WSO_PG_BIN"):
        return Path(os.environ["WSO_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: (p.parent.parent.name != "15", p))
    return found[0].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port, its unix socket in its own
    directory. initdb and postgres refuse to run as root, so as root (CI) they run as the `postgres` user.

    Bootstrap: an admin role with only what the provider needs (LOGIN CREATEROLE, pg_signal_backend, owner of
    database `app`), a table `notes`, a role `app_readonly` that may read it, and CONNECT on `app` revoked
    from PUBLIC -- so a workspace role can connect and read only through the provider's grants."""

    base: Path
    port: int
    admin_user: str = "wso_admin"
    admin_password: str = field(default="", repr=False)  # pytest prints fixtures' reprs in failure reports

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @staticmethod
    def _as_postgres(argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    @classmethod
    def start(cls, log_dir: Path) -> Postgres:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL server binaries not found in {PG_BIN}: run tools/install-system-deps.sh "
                               "(Debian package postgresql) or set WSO_PG_BIN")
        # Not under pytest's tmp dir: that is root-only (0700), and the server runs as `postgres`.
        base = Path(tempfile.mkdtemp(prefix="wso-pg-"))
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        pg = cls(base, free_port(), admin_password=secrets.token_urlsafe(24))
        log = open(log_dir / "postgres-initdb.log", "wb")
        subprocess.run(pg._as_postgres([str(PG_BIN / "initdb"), "-D", str(pg.data_dir), "-U", "postgres", "-E", "UTF8",
                                        "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256"]),
                       stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120)
        options = (f"-c listen_addresses=127.0.0.1 -p {pg.port} -k {base} -c fsync=off -c full_page_writes=off "
                   "-c synchronous_commit=off -c max_connections=50 -c shared_buffers=16MB")
        subprocess.run(pg._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(pg.data_dir), "-l", str(base / "postgres.log"),
                                        "-o", options, "-w", "-t", "60", "start"]),
                       stdout=log, stderr=subprocess.STDOUT, check=True, timeout=90)
        pg._bootstrap()
        return pg

    def superuser(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(host=str(self.base), port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def connect(self, user: str, password: str, dbname: str = "app", **kwargs):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, password=password, dbname=dbname,
                               connect_timeout=5, **kwargs)

    def _bootstrap(self) -> None:
        from psycopg import sql

        with self.superuser() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(self.admin_user), sql.Literal(self.admin_password)))
            conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(self.admin_user)))
            conn.execute(sql.SQL("CREATE DATABASE app OWNER {}").format(sql.Identifier(self.admin_user)))
            conn.execute("REVOKE CONNECT ON DATABASE app FROM PUBLIC")
        with self.connect(self.admin_user, self.admin_password, autocommit=True) as conn:
            conn.execute("CREATE ROLE app_readonly NOLOGIN")
            conn.execute("CREATE TABLE public.notes (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO public.notes VALUES (1, 'hello from app')")
            conn.execute("GRANT SELECT ON public.notes TO app_readonly")

    def roles(self, prefix: str = "wso-") -> list[str]:
        with self.superuser() as conn:
            rows = conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) ORDER BY 1", (prefix,)).fetchall()
        return [r[0] for r in rows]

    def stop(self) -> None:
        subprocess.run(self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
