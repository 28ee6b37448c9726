"""How credentials reach a workspace (files first; env values with a restart) and follow its life (WhileRunning)."""

import asyncio
import base64
import configparser
from datetime import timedelta

import pytest
import yaml
from unit.test_credentials_ledger import T0, MemoryProvider, secret_from, ws_with

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import SpecError
from workspace_secrets.credentials import ledger as ledgers
from workspace_secrets.credentials.manager import CredentialManager
from workspace_secrets.credentials.providers import aws_iam, postgresql, twilio
from workspace_secrets.credentials.providers.base import FileContext, Scope
from workspace_secrets.credentials.providers.kubernetes_token import KubernetesTokenProvider
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.workspace_secret import policy
from workspace_secrets.workspace_secret.rollout import Workload, rollout_complete

TAG = Scope.of("ns", "w", "u1", "tok").tag


def run(coro):
    return asyncio.run(coro)


def decoded(out, key):
    return base64.b64decode(out.data[key]).decode()


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


# --- the spec ------------------------------------------------------------------------------------------
def test_lifecycle_and_delivery_default_to_the_safe_choices():
    [spec] = ws_with([{"name": "tok", "provider": "mem"}]).credentials
    assert (spec.lifecycle, spec.delivery) == ("WhileRunning", "Files")
    [spec] = ws_with([{"name": "tok", "provider": "mem", "lifecycle": "WhileExists", "delivery": "Env"}]).credentials
    assert (spec.lifecycle, spec.delivery) == ("WhileExists", "Env")
    with pytest.raises(SpecError, match=r"spec.credentials\[0\].lifecycle"):
        ws_with([{"name": "tok", "provider": "mem", "lifecycle": "Forever"}])
    with pytest.raises(SpecError, match=r"spec.credentials\[0\].delivery"):
        ws_with([{"name": "tok", "provider": "mem", "delivery": "Both"}])


# --- lifecycle WhileRunning ----------------------------------------------------------------------------
def test_while_running_mints_only_while_the_workspace_runs_and_revokes_when_it_stops():
    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem"}])
    stopped = run(manager.reconcile(ws, None, running=False))
    assert provider.counter == 0 and "tok.token" not in stopped.data
    assert stopped.status == [{"name": "tok", "provider": "mem", "phase": "Stopped", "generation": 0}]
    started = run(manager.reconcile(ws, secret_from(stopped), running=True))
    assert provider.live == {TAG: {"id1"}} and started.status[0]["phase"] == "Active"
    again = run(manager.reconcile(ws, secret_from(started), running=False))
    assert provider.live == {} and not [k for k in again.data if k in ("tok.token", "tok.token.conf")]
    assert again.status[0]["phase"] == "Stopped" and again.ledger["tok"].generation == 1  # generations stay monotonic
    assert [e[1] for e in again.events] == ["CredentialRevoked"] and "workspace stopped" in again.events[0][2]
    # The file's path stays (no secret in it): pods find the same env var when the workspace starts again.
    assert decoded(again, "tok.TOKEN_FILE").endswith("/tok.token.conf")
    restarted = run(manager.reconcile(ws, secret_from(again), running=True))
    assert provider.live == {TAG: {"id2"}} and restarted.ledger["tok"].generation == 2


def test_while_running_stopped_revokes_an_orphan_of_a_crash():
    """Minted, then the operator died before recording it, and meanwhile the workspace stopped."""
    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem"}])
    run(manager.reconcile(ws, None, running=True))  # the Secret write is lost
    out = run(manager.reconcile(ws, None, running=False))
    assert provider.live == {} and out.status[0]["phase"] == "Stopped"


def test_while_exists_ignores_whether_the_workspace_runs():
    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem", "lifecycle": "WhileExists"}])
    out = run(manager.reconcile(ws, None, running=False))
    assert provider.live == {TAG: {"id1"}} and out.status[0]["phase"] == "Active"
    out = run(manager.reconcile(ws, secret_from(out), running=False))
    assert provider.counter == 1 and "tok.token" in out.data


def test_a_failed_revocation_on_stop_keeps_the_ledger_and_says_so():
    from workspace_secrets.credentials.providers.base import ProviderError

    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem"}])
    started = run(manager.reconcile(ws, None, running=True))

    async def refuse(scope, credential_id):
        raise ProviderError("503 Service Unavailable")

    provider.revoke = refuse
    out = run(manager.reconcile(ws, secret_from(started), running=False))
    assert out.problems[0].reason == "RevocationFailed" and out.ledger["tok"].current.id == "id1"
    assert "tok.token" not in out.data  # a stopped workspace gets no value, revoked or not


# --- delivery ---------------------------------------------------------------------------------------
def test_delivery_env_adds_the_values_and_files_only_names_files():
    manager = CredentialManager({"mem": MemoryProvider()}, clock=lambda: T0)
    files = run(manager.reconcile(ws_with([{"name": "tok", "provider": "mem", "lifecycle": "WhileExists"}]), None))
    env = run(manager.reconcile(ws_with([{"name": "tok", "provider": "mem", "lifecycle": "WhileExists", "delivery": "Env"}]), None))
    assert [e["name"] for e in files.env] == ["TOKEN_FILE"]
    assert [e["name"] for e in env.env] == ["TOKEN_FILE", "TOKEN"]


def test_files_follow_the_mount_path_and_an_older_secret_gets_them():
    manager = CredentialManager({"mem": MemoryProvider()}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem", "lifecycle": "WhileExists"}])
    first = run(manager.reconcile(ws, None))
    older = secret_from(first)
    older["data"] = {"tok.token": first.data["tok.token"]}  # written by an operator without files
    out = run(manager.reconcile(ws, older))
    assert decoded(out, "tok.token.conf").startswith("token=value-id1\n")


def rotating(delivery, kind):
    return ws_with([{"name": "tok", "provider": "mem", "lifecycle": "WhileExists", "delivery": delivery,
                     "rotateAfter": "1h", "overlap": "5m"}], kind=kind)


def test_env_delivery_into_a_deployment_keeps_the_old_value_until_the_restart_rolled_out():
    provider, clock = MemoryProvider(), Clock()
    manager = CredentialManager({"mem": provider}, clock=clock)
    ws = rotating("Env", "Deployment")
    idle = Workload("Deployment", True, "uid-d", None, True)
    first = run(manager.reconcile(ws, None, rollout=idle))
    assert first.restart is None  # the first credential needs no restart
    clock.now = T0 + timedelta(hours=1)
    rotated = run(manager.reconcile(ws, secret_from(first), rollout=idle))
    stamp = ledgers._ts(clock.now)
    assert rotated.restart == stamp and rotated.ledger["tok"].retiring[0].rollout == stamp
    assert ledgers.load(ledgers.dump(rotated.ledger)) == rotated.ledger  # the stamp survives a restart of the operator
    # Past the overlap, the template stamped but its pods not all replaced yet: the old key stays.
    clock.now += timedelta(minutes=10)
    rolling = Workload("Deployment", True, "uid-d", stamp, False)
    waiting = run(manager.reconcile(ws, secret_from(rotated), rollout=rolling))
    assert provider.live[TAG] == {"id1", "id2"} and waiting.restart == stamp
    assert waiting.wake_at == clock.now + ledgers.ROLLOUT_POLL
    # A crash before the template was stamped: the restart is still asked for.
    assert run(manager.reconcile(ws, secret_from(rotated), rollout=idle)).restart == stamp and provider.live[TAG] == {"id1", "id2"}
    # The next rotation is due, but the last one has not rolled out: it waits (no third live key).
    clock.now = T0 + timedelta(hours=2, minutes=1)
    waiting = run(manager.reconcile(ws, secret_from(waiting), rollout=rolling))
    assert provider.counter == 2 and provider.live[TAG] == {"id1", "id2"}
    done = run(manager.reconcile(ws, secret_from(waiting), rollout=Workload("Deployment", True, "uid-d", stamp, True)))
    assert "id1" not in provider.live[TAG] and done.ledger["tok"].retiring[-1].id == "id2"  # rolled out: revoked, and rotated again


def test_env_delivery_rolled_out_before_the_overlap_still_waits_for_the_overlap():
    provider, clock = MemoryProvider(), Clock()
    manager = CredentialManager({"mem": provider}, clock=clock)
    ws = rotating("Env", "Deployment")
    first = run(manager.reconcile(ws, None, rollout=Workload("Deployment", True, "u", None, True)))
    clock.now = T0 + timedelta(hours=1)
    rotated = run(manager.reconcile(ws, secret_from(first), rollout=Workload("Deployment", True, "u", None, True)))
    stamp = rotated.restart
    clock.now += timedelta(minutes=1)
    run(manager.reconcile(ws, secret_from(rotated), rollout=Workload("Deployment", True, "u", stamp, True)))
    assert provider.live[TAG] == {"id1", "id2"}


def test_files_delivery_and_pod_workspaces_never_wait_for_a_rollout():
    for delivery, kind in (("Files", "Deployment"), ("Env", "Pod")):
        provider, clock = MemoryProvider(), Clock()
        manager = CredentialManager({"mem": provider}, clock=clock)
        ws = rotating(delivery, kind)
        workload = Workload(kind, kind == "Deployment", "u", None, False)
        first = run(manager.reconcile(ws, None, rollout=workload))
        clock.now = T0 + timedelta(hours=1)
        rotated = run(manager.reconcile(ws, secret_from(first), rollout=workload))
        assert rotated.restart is None
        clock.now += timedelta(minutes=6)
        run(manager.reconcile(ws, secret_from(rotated), rollout=workload))
        assert provider.live[TAG] == {"id2"}, (delivery, kind)


# --- rollout status (kubectl rollout status's rule) ---------------------------------------------------
def deployment(generation=2, observed=2, replicas=1, updated=1, total=1, available=1):
    return {"kind": "Deployment", "metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total, "availableReplicas": available}}


@pytest.mark.parametrize("obj,complete", [
    (deployment(), True),
    (deployment(observed=1), False),  # the controller has not seen the new template
    (deployment(updated=0), False),
    (deployment(total=2), False),  # an old pod still runs
    (deployment(available=0), False),  # the new pod is not available (e.g. no node)
    (deployment(replicas=0, updated=0, total=0, available=0), True),  # scaled to zero: nobody holds the old value
    ({"kind": "StatefulSet", "metadata": {"generation": 3}, "spec": {"replicas": 2},
      "status": {"observedGeneration": 3, "updatedReplicas": 2, "readyReplicas": 2, "currentRevision": "r2", "updateRevision": "r2"}}, True),
    ({"kind": "StatefulSet", "metadata": {"generation": 3}, "spec": {"replicas": 2},
      "status": {"observedGeneration": 3, "updatedReplicas": 2, "readyReplicas": 2, "currentRevision": "r1", "updateRevision": "r2"}}, False),
])
def test_rollout_complete(obj, complete):
    assert rollout_complete(obj) is complete


def test_a_workload_rolled_out_only_at_or_after_the_stamp():
    assert Workload("Deployment", True, "u", "2026-11-29T13:00:00Z", True).rolled_out("2026-11-29T13:00:00Z")
    assert not Workload("Deployment", True, "u", "2026-11-29T12:00:00Z", True).rolled_out("2026-11-29T13:00:00Z")
    assert not Workload("Deployment", True, "u", None, True).rolled_out("2026-11-29T13:00:00Z")
    assert Workload("Pod").rolled_out("2026-11-29T13:00:00Z")


# --- CredentialsReady -------------------------------------------------------------------------------------
def test_credentials_ready_says_what_is_stopped_and_what_env_cannot_follow():
    ws = ws_with([{"name": "a", "provider": "mem"}, {"name": "b", "provider": "mem", "delivery": "Env", "lifecycle": "WhileExists"}])
    cond = policy.credentials_ready(ws, [{"name": "a", "phase": "Stopped"}, {"name": "b", "phase": "Active"}])
    assert cond.status and cond.reason == "Issued"
    assert "issued and current: b." in cond.message and "not running: a (lifecycle WhileRunning) revoked" in cond.message
    assert "delivery Env into a Pod workspace: the env values of b cannot follow a rotation" in cond.message
    only_stopped = policy.credentials_ready(ws_with([{"name": "a", "provider": "mem"}], kind="Deployment"), [{"name": "a", "phase": "Stopped"}])
    assert only_stopped.reason == "WorkspaceStopped" and "cannot follow" not in only_stopped.message


# --- each provider's tool files -------------------------------------------------------------------------
WHERE = FileContext("db", "/var/run/workspace-secrets", "team-a")


def test_aws_shared_credentials_and_config_files():
    files = aws_iam.shared_files({"AWS_ACCESS_KEY_ID": Sensitive("AKIA1"), "AWS_SECRET_ACCESS_KEY": Sensitive("s3cr3t"),
                                  "AWS_REGION": Sensitive("eu-west-1")})
    creds, config = configparser.ConfigParser(), configparser.ConfigParser()
    creds.read_string(files["credentials"].reveal_text())
    config.read_string(files["config"].reveal_text())
    assert dict(creds["default"]) == {"aws_access_key_id": "AKIA1", "aws_secret_access_key": "s3cr3t"}
    assert dict(config["default"]) == {"region": "eu-west-1"}
    provider = aws_iam.AwsIamProvider("aws", None, region="eu-west-1", policy_arns=[])
    assert {k: getattr(v, "suffix", v) for k, v in provider.file_env().items()} == {
        "AWS_SHARED_CREDENTIALS_FILE": "credentials", "AWS_CONFIG_FILE": "config", "AWS_REGION": "AWS_REGION"}
    assert "AWS_SECRET_ACCESS_KEY" not in provider.file_env()


def test_kubeconfig_reads_the_token_file_with_the_configured_server_and_ca():
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
    provider = KubernetesTokenProvider.from_config(name="t", kube=None, admin={}, config={
        "allowedServiceAccounts": ["ci-*"], "audiences": ["a"], "server": "https://10.0.0.1:6443", "certificateAuthorityData": ca})
    files = provider.files({"token": Sensitive("eyJ.tok")}, WHERE)
    config = yaml.safe_load(files["kubeconfig"].reveal_text())
    assert config["clusters"][0]["cluster"] == {"server": "https://10.0.0.1:6443", "certificate-authority-data": ca}
    assert config["users"][0]["user"] == {"tokenFile": "/var/run/workspace-secrets/db.token"}  # not the token itself
    assert config["contexts"][0]["context"]["namespace"] == "team-a" and "eyJ.tok" not in files["kubeconfig"].reveal_text()
    assert provider.file_env()["KUBECONFIG"].suffix == "kubeconfig"
    with pytest.raises(ValueError, match="certificateAuthorityData"):
        KubernetesTokenProvider.from_config(name="t", kube=None, admin={}, config={
            "allowedServiceAccounts": ["ci-*"], "audiences": ["a"], "certificateAuthorityData": "not base64 PEM"})


def test_postgresql_service_file_carries_the_rotating_role_and_pgpass_escapes():
    values = {"PGHOST": Sensitive("db.example"), "PGPORT": Sensitive("5432"), "PGDATABASE": Sensitive("app"),
              "PGUSER": Sensitive("wso-0123456789ab_g3"), "PGPASSWORD": Sensitive("pa:ss\\word")}
    files = postgresql.client_files(values, "require", "db")
    service = configparser.ConfigParser()
    service.read_string(files["pg_service.conf"].reveal_text())
    assert dict(service["db"]) == {"host": "db.example", "port": "5432", "dbname": "app", "user": "wso-0123456789ab_g3",
                                   "password": "pa:ss\\word", "sslmode": "require"}
    assert files["pgpass"].reveal_text() == "db.example:5432:app:wso-0123456789ab_g3:pa\\:ss\\\\word\n"
    assert files["PGSERVICE"].reveal_text() == "db"


def test_twilio_dotenv():
    files = twilio.dotenv({"TWILIO_ACCOUNT_SID": Sensitive("AC1"), "TWILIO_API_KEY": Sensitive("SK1"), "TWILIO_API_SECRET": Sensitive("x")})
    assert files["twilio.env"].reveal_text() == "TWILIO_ACCOUNT_SID=AC1\nTWILIO_API_KEY=SK1\nTWILIO_API_SECRET=x\n"


def test_restarted_at_is_ours():
    assert c.ANNOTATION_RESTARTED_AT == "workspace-secrets.io/restartedAt"
