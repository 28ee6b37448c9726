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
from workspace_secrets.runtime.kube import KubeError
from workspace_secrets.workspace_secret.rollout import Rollouts, Workload, rollout_complete, rollout_failure

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
    # The env is published before anything is minted (a pod admitted while stopped gets the same env vars).
    assert stopped.env and stopped.env == started.env
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


def test_a_stopped_workspace_s_credential_is_revoked_even_if_its_parameters_became_invalid():
    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    started = run(manager.reconcile(ws_with([{"name": "tok", "provider": "mem"}]), None, running=True))
    broken = ws_with([{"name": "tok", "provider": "mem", "parameters": {"bad": "x"}}])
    out = run(manager.reconcile(broken, secret_from(started), running=False))
    assert provider.live == {} and out.status[0]["phase"] == "Stopped" and "tok.token" not in out.data
    assert [p.reason for p in out.problems] == ["PolicyViolation"]  # and the user is told before the workspace starts
    running = run(manager.reconcile(broken, secret_from(out), running=True))  # running: the parameters matter again
    assert provider.counter == 1 and running.problems[0].reason == "PolicyViolation"


class ReleaseCounting(MemoryProvider):
    def __init__(self):
        super().__init__()
        self.released = 0

    async def release(self, scope):
        self.released += 1
        await super().release(scope)


def test_stop_releases_a_scope_whose_credential_was_never_created_once():
    """An AWS IAM user created, then the key creation failed: nothing live, but the scope must go on stop."""
    from workspace_secrets.credentials.providers.base import ProviderError

    provider = ReleaseCounting()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem"}])
    stopped = run(manager.reconcile(ws, None, running=False))
    assert provider.released == 1 and stopped.ledger["tok"].stopped
    stopped = run(manager.reconcile(ws, secret_from(stopped), running=False))
    assert provider.released == 1  # released once per stop, not on every reconcile of a stopped workspace
    provider.fail_next = ProviderError("LimitExceeded: the user was created, its access key was not")
    failed = run(manager.reconcile(ws, secret_from(stopped), running=True))
    assert failed.problems[0].reason == "ProviderError" and not failed.ledger["tok"].ids
    run(manager.reconcile(ws, secret_from(failed), running=False))
    assert provider.released == 2


# --- no SSH key, and the workspace stopped: a revoke-only pass (workspace_secret/secret.py Secrets.stop) ---
class SecretKube:
    def __init__(self, secret):
        self.secret, self.replaced = secret, []

    async def get(self, path):
        return self.secret

    async def replace(self, path, body):
        self.replaced.append(body)
        return {**body, "metadata": {**body["metadata"], "namespace": "ns", "name": "w", "resourceVersion": "2"}}


def test_stop_without_a_key_revokes_and_updates_only_a_secret_it_controls():
    from workspace_secrets.workspace_secret.secret import Secrets

    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem"}, {"name": "keep", "provider": "mem", "lifecycle": "WhileExists"}],
                 status={"credentials": [{"name": "keep", "provider": "mem", "phase": "Active", "generation": 1}]})
    started = run(manager.reconcile(ws, None, running=True))
    secret = secret_from(started)
    secret["metadata"].update({"ownerReferences": [{"uid": "u1", "controller": True}], "resourceVersion": "1"})
    secret["data"] = {**secret["data"], "ssh-privatekey": "a2V5"}
    kube = SecretKube(secret)
    creds = run(Secrets(kube, manager).stop(ws))
    keep_tag = Scope.of("ns", "w", "u1", "keep").tag
    assert provider.live == {keep_tag: {"id2"}}  # the WhileRunning one revoked, the WhileExists one untouched
    [written] = kube.replaced
    assert "tok.token" not in written["data"] and "tok.token.conf" not in written["data"]
    assert written["data"]["ssh-privatekey"] == "a2V5" and written["data"]["keep.token"] == secret["data"]["keep.token"]
    ledger = ledgers.load(written["metadata"]["annotations"][c.ANNOTATION_CREDENTIALS])
    assert ledger["tok"].stopped and not ledger["tok"].ids and ledger["keep"].current.id == "id2"
    assert [e["phase"] for e in creds.status] == ["Stopped", "Active"]
    unchanged = SecretKube({**written, "metadata": {**written["metadata"], "resourceVersion": "2"}})
    run(Secrets(unchanged, manager).stop(ws))
    assert unchanged.replaced == []  # nothing changed: no write
    # A Secret of that name that this WorkspaceSecret does not control: the provider side still, the Secret never.
    run(manager.reconcile(ws, secret_from(started), running=True))
    foreign = {**secret_from(started), "metadata": {"ownerReferences": [{"uid": "other", "controller": True}]}}
    kube = SecretKube(foreign)
    run(Secrets(kube, manager).stop(ws))
    assert kube.replaced == [] and Scope.of("ns", "w", "u1", "tok").tag not in provider.live


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


def rotating(delivery, kind, rotate="1h"):
    return ws_with([{"name": "tok", "provider": "mem", "lifecycle": "WhileExists", "delivery": delivery,
                     "rotateAfter": rotate, "overlap": "5m"}], kind=kind)


def test_env_delivery_into_a_deployment_keeps_the_old_value_until_the_restart_rolled_out():
    provider, clock = MemoryProvider(), Clock()
    manager = CredentialManager({"mem": provider}, clock=clock)
    ws = rotating("Env", "Deployment", rotate="15m")
    idle = Workload("Deployment", True, "uid-d", None, True)
    first = run(manager.reconcile(ws, None, rollout=idle))
    assert first.restart is None  # the first credential needs no restart
    clock.now = T0 + timedelta(minutes=15)
    rotated = run(manager.reconcile(ws, secret_from(first), rollout=idle))
    stamp = ledgers._ts(clock.now)
    assert rotated.restart == stamp and rotated.ledger["tok"].retiring[0].rollout == stamp
    assert ledgers.load(ledgers.dump(rotated.ledger)) == rotated.ledger  # the stamp survives a restart of the operator
    # Past the overlap (ended T0+20m), the template stamped but its pods not all replaced yet: the old key stays,
    # and the next look backs off (as long as it already waited past the overlap).
    clock.now = T0 + timedelta(minutes=20, seconds=5)
    rolling = Workload("Deployment", True, "uid-d", stamp, False)
    waiting = run(manager.reconcile(ws, secret_from(rotated), rollout=rolling))
    assert provider.live[TAG] == {"id1", "id2"} and waiting.restart == stamp
    assert waiting.wake_at == clock.now + ledgers.ROLLOUT_POLL
    clock.now = T0 + timedelta(minutes=25)
    waiting = run(manager.reconcile(ws, secret_from(rotated), rollout=rolling))
    assert waiting.wake_at == clock.now + timedelta(minutes=5) and not waiting.problems
    # A crash before the template was stamped: the restart is still asked for.
    assert run(manager.reconcile(ws, secret_from(rotated), rollout=idle)).restart == stamp and provider.live[TAG] == {"id1", "id2"}
    # The next rotation is due, but the last one has not rolled out: it waits (no third live key).
    clock.now = T0 + timedelta(minutes=31)
    waiting = run(manager.reconcile(ws, secret_from(waiting), rollout=rolling))
    assert provider.counter == 2 and provider.live[TAG] == {"id1", "id2"}
    done = run(manager.reconcile(ws, secret_from(waiting), rollout=Workload("Deployment", True, "uid-d", stamp, True)))
    assert "id1" not in provider.live[TAG] and done.ledger["tok"].retiring[-1].id == "id2"  # rolled out: revoked, and rotated again
    assert not done.problems and not any(e[0] == "Warning" for e in done.events)


def test_a_rollout_that_never_finishes_keeps_the_old_credential_at_most_rollout_timeout_past_its_overlap():
    provider, clock = MemoryProvider(), Clock()
    manager = CredentialManager({"mem": provider}, clock=clock)
    ws = rotating("Env", "Deployment")
    first = run(manager.reconcile(ws, None, rollout=Workload("Deployment", True, "u", None, True)))
    clock.now = T0 + timedelta(hours=1)
    rotated = run(manager.reconcile(ws, secret_from(first), rollout=Workload("Deployment", True, "u", None, True)))
    stamp = rotated.restart
    stuck = Workload("Deployment", True, "u", stamp, False)  # e.g. a pod of the new template never becomes ready
    overlap_end = clock.now + timedelta(minutes=5)
    clock.now = overlap_end + ledgers.ROLLOUT_TIMEOUT - timedelta(seconds=1)
    waiting = run(manager.reconcile(ws, secret_from(rotated), rollout=stuck))
    assert provider.live[TAG] == {"id1", "id2"}
    assert waiting.wake_at == overlap_end + ledgers.ROLLOUT_TIMEOUT  # the poll never overshoots the deadline
    clock.now = overlap_end + ledgers.ROLLOUT_TIMEOUT
    forced = run(manager.reconcile(ws, secret_from(waiting), rollout=stuck))
    assert provider.live[TAG] == {"id2"}
    [warning] = [e for e in forced.events if e[0] == "Warning"]
    assert warning[1] == "CredentialRevokedBeforeRollout" and "id1" in warning[2]
    assert "rollout restart deployment/p" in warning[2]
    [problem] = forced.problems
    assert problem.reason == "RolloutStuck" and "still holds the old, now revoked value" in problem.message
    assert forced.ledger["tok"].stale == stamp and forced.wake_at == clock.now + ledgers.ROLLOUT_POLL_MAX
    # Still stuck: the condition stays (the ledger remembers); once the workspace was restarted, it is gone.
    again = run(manager.reconcile(ws, secret_from(forced), rollout=stuck))
    assert [p.reason for p in again.problems] == ["RolloutStuck"]
    clock.now += timedelta(minutes=1)
    fixed = run(manager.reconcile(ws, secret_from(again), rollout=Workload("Deployment", True, "u", stamp, True)))
    assert not fixed.problems and fixed.ledger["tok"].stale is None


@pytest.mark.parametrize("failure", ["the Deployment is paused", "StatefulSet updateStrategy OnDelete"])
def test_a_failed_rollout_does_not_hold_the_old_credential_past_its_overlap(failure):
    provider, clock = MemoryProvider(), Clock()
    manager = CredentialManager({"mem": provider}, clock=clock)
    ws = rotating("Env", "Deployment")
    first = run(manager.reconcile(ws, None, rollout=Workload("Deployment", True, "u", None, True)))
    clock.now = T0 + timedelta(hours=1)
    rotated = run(manager.reconcile(ws, secret_from(first), rollout=Workload("Deployment", True, "u", None, True)))
    failed = Workload("Deployment", True, "u", rotated.restart, False, failure)
    clock.now += timedelta(minutes=4)
    run(manager.reconcile(ws, secret_from(rotated), rollout=failed))
    assert provider.live[TAG] == {"id1", "id2"}  # the overlap still holds
    clock.now += timedelta(minutes=1)
    out = run(manager.reconcile(ws, secret_from(rotated), rollout=failed))
    assert provider.live[TAG] == {"id2"} and failure in out.problems[0].message


@pytest.mark.parametrize("how", ["RevokedAtProvider", "ValuesLost"])
def test_env_delivery_restarts_the_workspace_when_the_credential_is_replaced_for_any_reason(how):
    provider, clock = MemoryProvider(), Clock()
    manager = CredentialManager({"mem": provider}, clock=clock)
    ws = rotating("Env", "Deployment")
    idle = Workload("Deployment", True, "u", None, True)
    first = run(manager.reconcile(ws, None, rollout=idle))
    secret = secret_from(first)
    if how == "RevokedAtProvider":
        provider.live[TAG].clear()
    else:
        secret["data"] = {k: v for k, v in secret["data"].items() if not k.startswith("tok.")}
    clock.now += timedelta(minutes=1)
    replaced = run(manager.reconcile(ws, secret, rollout=idle))
    assert provider.counter == 2 and replaced.restart == ledgers._ts(clock.now)  # the pods' env held the old value
    assert provider.live[TAG] == {"id2"}


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


# --- the workload: observe and restart (I/O against a stub API) -----------------------------------------
class StubKube:
    def __init__(self, obj=None, error=None):
        self.obj, self.error, self.patches = obj, error, []

    async def get(self, path):
        if self.error:
            raise self.error
        return self.obj

    async def merge_patch(self, path, patch):
        if self.error:
            raise self.error
        self.patches.append((path, patch))
        return {}


def workload_obj(**spec):
    obj = deployment()
    obj["metadata"].update({"uid": "uid-d", "labels": {c.LABEL_USER: "alice"}})
    obj["spec"].update(spec)
    return obj


def test_restart_stamps_the_pod_template_of_the_observed_workload_only():
    kube = StubKube(workload_obj())
    ws = rotating("Env", "Deployment")
    rollouts = Rollouts(kube)
    workload = run(rollouts.observe(ws))
    assert workload.restartable and workload.uid == "uid-d" and workload.failure is None
    assert run(rollouts.restart(ws, workload, "2026-11-29T13:00:00Z")) is True
    [(path, patch)] = kube.patches
    assert path.endswith("/namespaces/ns/deployments/p")
    assert patch == {"metadata": {"uid": "uid-d"},  # the uid precondition: never a replacement of that name
                     "spec": {"template": {"metadata": {"annotations": {"workspace-secrets.io/restartedAt": "2026-11-29T13:00:00Z"}}}}}


@pytest.mark.parametrize("obj,failure", [
    (workload_obj(paused=True), "paused"),
    ({**workload_obj(), "status": {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}},
     "ProgressDeadlineExceeded"),
    ({"kind": "StatefulSet", "spec": {"updateStrategy": {"type": "OnDelete"}}}, "OnDelete"),
    (workload_obj(), None),
    ({**workload_obj(), "status": {"conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}}, None),
])
def test_rollout_failure(obj, failure):
    found = rollout_failure(obj)
    assert (found is None) if failure is None else (failure in found)


def test_a_forbidden_restart_or_read_is_a_problem_not_a_failed_reconcile():
    ws = rotating("Env", "Deployment")
    forbidden = KubeError(403, "Forbidden", 'deployments.apps "p" is forbidden')
    workload = Workload("Deployment", True, "uid-d", None, True)
    said = run(Rollouts(StubKube(error=forbidden)).restart(ws, workload, "2026-11-29T13:00:00Z"))
    assert said == ("the operator cannot restart Deployment 'p': 403 Forbidden; the platform must grant the operator apps "
                    "deployments get and patch in this namespace (Helm chart RBAC)")
    unread = run(Rollouts(StubKube(error=forbidden)).observe(ws))
    assert not unread.restartable and "cannot read Deployment 'p': 403 Forbidden" in unread.problem
    with pytest.raises(KubeError):  # anything else is retried as before
        run(Rollouts(StubKube(error=KubeError(500, "InternalError", "x"))).restart(ws, workload, "s"))


def test_the_reconcile_revokes_a_stopped_workspace_s_credentials_while_its_ssh_key_has_a_problem():
    """The controller's step 4 without a key: a brought key Secret deleted, and the workspace stopped."""
    from datetime import datetime, timezone

    from fakes.kube import FakeKube

    from workspace_secrets.runtime.events import EventRecorder
    from workspace_secrets.workspace_secret.controller import WorkspaceSecretController

    now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    ns, secrets, pods = "team", "/api/v1/namespaces/team/secrets", "/api/v1/namespaces/team/pods"
    wss = f"/apis/{c.API_VERSION}/namespaces/team/{c.WORKSPACE_SECRET_PLURAL}"
    kube, provider = FakeKube(clock=lambda: now), MemoryProvider()
    controller = WorkspaceSecretController(kube, EventRecorder(kube), credentials=CredentialManager({"mem": provider}, clock=lambda: now),  # type: ignore[arg-type]
                                           clock=lambda: now)
    body = kube.put(wss, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "w"},
                          "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"},
                                   "credentials": [{"name": "tok", "provider": "mem"}]}})
    kube.put(pods, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {
        c.LABEL_USER: "alice", "workspace-secrets.io/workspace-secret": "w"}}, "status": {"phase": "Running"}})
    run(controller.reconcile_by_name(ns, "w"))
    tag = Scope.of(ns, "w", body["metadata"]["uid"], "tok").tag
    assert provider.live == {tag: {"id1"}} and "tok.token" in kube.get_object(f"{secrets}/w")["data"]
    # The user points the WorkspaceSecret at a key Secret that does not exist (a key problem), and stops the workspace.
    ws_obj = kube.get_object(f"{wss}/w")
    ws_obj["spec"]["ssh"] = {"existingSecretRef": {"name": "gone"}}
    kube.put(wss, ws_obj)
    kube.remove(f"{pods}/p")
    run(controller.reconcile_by_name(ns, "w"))
    assert provider.live.get(tag, set()) == set()
    secret = kube.get_object(f"{secrets}/w")
    assert "tok.token" not in secret["data"] and ledgers.load(secret["metadata"]["annotations"][c.ANNOTATION_CREDENTIALS])["tok"].stopped
    status = kube.get_object(f"{wss}/w")["status"]
    assert [e["phase"] for e in status["credentials"]] == ["Stopped"]
    ready = {x["type"]: x["status"] for x in status["conditions"]}
    assert ready[c.CONDITION_READY] == "False"  # the key problem is still reported


def test_a_refused_restart_patch_is_a_condition_and_the_reconcile_still_writes_secret_and_status():
    from datetime import datetime, timezone

    from fakes.kube import FakeKube

    from workspace_secrets.runtime.events import EventRecorder
    from workspace_secrets.workspace_secret.controller import WorkspaceSecretController

    clock = Clock()
    clock.now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    wss = f"/apis/{c.API_VERSION}/namespaces/team/{c.WORKSPACE_SECRET_PLURAL}"
    deployments = "/apis/apps/v1/namespaces/team/deployments"
    kube, provider = FakeKube(clock=clock), MemoryProvider()
    controller = WorkspaceSecretController(kube, EventRecorder(kube), credentials=CredentialManager({"mem": provider}, clock=clock),  # type: ignore[arg-type]
                                           clock=clock)
    kube.put(deployments, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {c.LABEL_USER: "alice"}},
                           "spec": {"replicas": 1, "template": {"metadata": {}}}})
    kube.put(wss, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "w"},
                   "spec": {"user": "alice", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                            "credentials": [{"name": "tok", "provider": "mem", "lifecycle": "WhileExists", "delivery": "Env",
                                             "rotateAfter": "1h", "overlap": "5m"}]}})
    run(controller.reconcile_by_name("team", "w"))
    assert provider.counter == 1
    clock.now += timedelta(hours=1)
    kube.fail("PATCH", f"{deployments}/d", 403, times=None, message='deployments.apps "d" is forbidden')
    run(controller.reconcile_by_name("team", "w"))  # no exception: the work queue would retry it for ever
    assert provider.counter == 2 and decoded_secret(kube, "w", "tok.token") == b"value-id2"  # the Secret was written
    ready = next(x for x in kube.get_object(f"{wss}/w")["status"]["conditions"] if x["type"] == c.CONDITION_CREDENTIALS_READY)
    assert ready["status"] == "False" and ready["reason"] == "RestartFailed"
    assert "the operator cannot restart Deployment 'd': 403 Forbidden; the platform must grant" in ready["message"]


def decoded_secret(kube, name, key):
    return base64.b64decode(kube.get_object(f"/api/v1/namespaces/team/secrets/{name}")["data"][key])
