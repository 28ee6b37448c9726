"""The credential ledger's decisions, at every crash point and along the rotation timeline."""

import asyncio
import base64
from datetime import datetime, timedelta, timezone

import pytest

from workspace_secrets.api import constants as c
from workspace_secrets.api.durations import format_duration, parse_duration
from workspace_secrets.api.workspace_secret import CredentialSpec, SpecError, WorkspaceSecret
from workspace_secrets.credentials.manager import CredentialManager
from workspace_secrets.credentials import ledger as ledgers
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.credentials.providers.base import FileRef, Issued, ProviderError, Scope

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
SPEC = CredentialSpec(name="aws", provider="aws-dev", rotate_after=timedelta(hours=12), overlap=timedelta(minutes=5))


def rec(id_, issued=T0, expires=None, revoke_after=None):
    return ledgers.Record(id_, issued, expires, revoke_after)


def test_durations():
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("7d") == timedelta(days=7)
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    for bad in ("", "5", "1y", "-1h", "1h 2m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_ledger_round_trips_and_is_deterministic():
    ledger = {"aws": ledgers.EntryLedger("aws-dev", 2, rec("AK2"), (rec("AK1", revoke_after=T0 + timedelta(minutes=5)),))}
    text = ledgers.dump(ledger)
    assert ledgers.load(text) == ledger and ledgers.dump(ledgers.load(text)) == text
    assert ledgers.load("not json") == {}  # damaged: everything live becomes an orphan, never leaked


def test_nothing_recorded_means_issue():
    p = ledgers.plan(SPEC, None, set(), False, T0)
    assert p.issue_reason == "Missing" and not p.revoke


def test_crash_between_minting_and_recording_revokes_the_orphan_and_issues_again():
    p = ledgers.plan(SPEC, None, {"AK-orphan"}, False, T0)
    assert p.revoke == {"AK-orphan"} and p.issue_reason == "Missing"


def test_steady_state_keeps_the_credential_and_wakes_for_rotation():
    ledger = ledgers.EntryLedger("aws-dev", 1, rec("AK1"))
    p = ledgers.plan(SPEC, ledger, {"AK1"}, True, T0 + timedelta(hours=1))
    assert p.issue_reason is None and not p.revoke
    assert p.wake_at == T0 + timedelta(hours=12)


def test_rotation_keeps_the_old_one_for_the_overlap_then_revokes_it():
    ledger = ledgers.EntryLedger("aws-dev", 1, rec("AK1"))
    now = T0 + timedelta(hours=12)
    p = ledgers.plan(SPEC, ledger, {"AK1"}, True, now)
    assert p.issue_reason == "Rotation" and not p.revoke
    after = ledgers.after_issue(SPEC, p.keep, rec("AK2", issued=now), now)
    assert after.current.id == "AK2" and after.generation == 2
    assert [(r.id, r.revoke_after) for r in after.retiring] == [("AK1", now + timedelta(minutes=5))]
    during = ledgers.plan(SPEC, after, {"AK1", "AK2"}, True, now + timedelta(minutes=1))
    assert during.issue_reason is None and not during.revoke and during.wake_at == now + timedelta(minutes=5)
    past = ledgers.plan(SPEC, after, {"AK1", "AK2"}, True, now + timedelta(minutes=6))
    assert past.revoke == {"AK1"} and past.keep.retiring == ()


def test_expiring_credentials_renew_at_two_thirds_of_their_lifetime():
    spec = CredentialSpec(name="k8s", provider="tokens")
    ledger = ledgers.EntryLedger("tokens", 1, rec("anchor-1", expires=T0 + timedelta(hours=3)))
    assert ledgers.plan(spec, ledger, {"anchor-1"}, True, T0 + timedelta(hours=1)).wake_at == T0 + timedelta(hours=2)
    assert ledgers.plan(spec, ledger, {"anchor-1"}, True, T0 + timedelta(hours=2)).issue_reason == "Rotation"


def test_a_credential_revoked_behind_our_back_is_replaced():
    ledger = ledgers.EntryLedger("aws-dev", 1, rec("AK1"))
    p = ledgers.plan(SPEC, ledger, set(), True, T0)
    assert p.issue_reason == "RevokedAtProvider"


def test_lost_values_are_replaced_and_the_unreachable_credential_revoked():
    ledger = ledgers.EntryLedger("aws-dev", 1, rec("AK1"))
    p = ledgers.plan(SPEC, ledger, {"AK1"}, False, T0)
    assert p.issue_reason == "ValuesLost" and p.revoke == {"AK1"}


# --- the manager, with an in-memory provider (unit level only; e2e uses real servers) -------------
class MemoryProvider:
    type_name = "memory"
    access = ledgers.AccessRule(namespaces=("*",))

    def __init__(self, name="mem"):
        self.name = name
        self.live: dict[str, set[str]] = {}
        self.counter = 0
        self.fail_next: ProviderError | None = None

    def env(self):
        return {"TOKEN": "token"}

    def file_env(self):
        return {"TOKEN_FILE": FileRef("token.conf")}

    def files(self, values, where):
        if "token" not in values:
            return {}
        return {"token.conf": Sensitive(f"token={values['token'].reveal_text()}\nself={where.path('token.conf')}\n")}

    def validate(self, parameters):
        return "bad parameter" if "bad" in parameters else None

    async def issue(self, scope, parameters, generation):
        if self.fail_next:
            error, self.fail_next = self.fail_next, None
            raise error
        self.counter += 1
        cid = f"id{self.counter}"
        self.live.setdefault(scope.tag, set()).add(cid)
        return Issued(cid, {"token": Sensitive(f"value-{cid}")})

    async def revoke(self, scope, credential_id):
        self.live.get(scope.tag, set()).discard(credential_id)

    async def list(self, scope):
        return sorted(self.live.get(scope.tag, ()))

    async def release(self, scope):
        self.live.pop(scope.tag, None)

    async def sweep(self):
        return list(self.live)


def ws_with(credentials, status=None, kind="Pod"):
    return WorkspaceSecret.from_body({
        "metadata": {"name": "w", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {"user": "alice", "workspaceRef": {"kind": kind, "name": "p"}, "credentials": credentials},
        "status": status or {},
    })


def secret_from(outcome):
    return {"metadata": {"annotations": {c.ANNOTATION_CREDENTIALS: ledgers.dump(outcome.ledger)}}, "data": outcome.data}


def run(coro):
    return asyncio.run(coro)


def test_manager_issues_records_and_converges_after_a_lost_write():
    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem"}])
    first = run(manager.reconcile(ws, None))
    assert base64.b64decode(first.data["tok.token"]) == b"value-id1"
    # delivery Files (the default): the env var names the file, which kubelet keeps current.
    assert first.env == [{"name": "TOKEN_FILE", "key": "tok.TOKEN_FILE"}]
    assert base64.b64decode(first.data["tok.TOKEN_FILE"]) == b"/var/run/workspace-secrets/tok.token.conf"
    assert base64.b64decode(first.data["tok.token.conf"]) == b"token=value-id1\nself=/var/run/workspace-secrets/tok.token.conf\n"
    assert first.status[0]["id"] == "id1" and "value" not in repr(first.status)
    # The Secret write was lost (crash): the next reconcile finds id1 unrecorded, revokes it, issues id2.
    second = run(manager.reconcile(ws, None))
    assert provider.live[Scope.of("ns", "w", "u1", "tok").tag] == {"id2"}
    # Recorded now: a third reconcile changes nothing.
    third = run(manager.reconcile(ws, secret_from(second)))
    assert third.data == second.data and provider.counter == 2 and not third.events


def test_manager_reports_unknown_providers_policy_violations_and_provider_errors():
    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0, unavailable={"broken": "no admin secret"})
    out = run(manager.reconcile(ws_with([{"name": "a", "provider": "nope"}, {"name": "b", "provider": "broken"},
                                         {"name": "d", "provider": "mem", "parameters": {"bad": "1"}}]), None))
    reasons = [p.reason for p in out.problems]
    assert reasons == ["UnknownProvider", "ProviderUnavailable", "PolicyViolation"]
    assert "spec.credentials[0].provider" in out.problems[0].message and "configured: mem" in out.problems[0].message
    provider.fail_next = ProviderError("503 Service Unavailable")
    out = run(manager.reconcile(ws_with([{"name": "e", "provider": "mem"}]), None))
    assert out.problems[0].reason == "ProviderError" and "503" in out.problems[0].message


def test_removed_entry_is_revoked_and_dropped():
    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    out = run(manager.reconcile(ws_with([{"name": "tok", "provider": "mem"}]), None))
    out = run(manager.reconcile(ws_with([]), secret_from(out)))
    assert out.ledger == {} and out.data == {} and provider.live == {}


def test_revoke_all_covers_spec_and_ledger():
    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem"}])
    run(manager.reconcile(ws, None))  # minted, never recorded
    revoked, errors = run(manager.revoke_all(ws, None))
    assert revoked == ["id1"] and not errors and provider.live == {}


def test_duplicate_entry_names_are_refused():
    with pytest.raises(SpecError, match=r"spec.credentials\[1\].name"):
        ws_with([{"name": "x", "provider": "mem"}, {"name": "x", "provider": "mem"}])


# --- who may use a provider (issue 14, instance 10) -------------------------------------------------
@pytest.mark.parametrize("raw,namespace,user,allowed", [
    ({"namespaces": ["*"]}, "ns", "alice", True),
    ({"namespaces": ["team-*"]}, "team-a", "alice", True),
    ({"namespaces": ["team-*"]}, "ns", "alice", False),
    ({"users": ["alice", "ci-*"]}, "ns", "ci-bot", True),
    ({"users": ["alice"]}, "ns", "bob", False),
    ({"namespaces": ["ns"], "users": ["alice"]}, "ns", "alice", True),
    ({"namespaces": ["ns"], "users": ["alice"]}, "ns", "bob", False),
    ({"namespaces": ["ns"], "users": ["alice"]}, "other", "alice", False),
])
def test_access_rules_match_namespace_and_user_globs(raw, namespace, user, allowed):
    assert ledgers.AccessRule.parse(raw).permits(namespace, user) is allowed


@pytest.mark.parametrize("raw", [{}, {"namespaces": []}, {"namespaces": "*"}, {"groups": ["x"]}, ["*"], {"users": [""]}])
def test_malformed_access_rules_are_configuration_errors(raw):
    with pytest.raises(ValueError, match="allow"):
        ledgers.AccessRule.parse(raw)


def test_no_allow_rule_means_nobody():
    assert ledgers.AccessRule.parse(None) is None
    assert "must add an allow rule" in ledgers.access_refusal("mem", None, "ns", "alice")


def test_a_provider_that_does_not_allow_the_workspace_secret_mints_nothing_and_says_what_to_add():
    provider = MemoryProvider()
    provider.access = ledgers.AccessRule(namespaces=("team-*", "secret-team"), users=("bob",))
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    out = run(manager.reconcile(ws_with([{"name": "tok", "provider": "mem"}]), None))
    assert provider.counter == 0 and out.data == {} and out.env == []
    [problem] = out.problems
    assert problem.reason == "PolicyViolation"
    assert problem.message.startswith("spec.credentials[0].provider: provider 'mem' is not allowed for user 'alice' in namespace 'ns'")
    assert "namespace 'ns' to allow.namespaces and user 'alice' to allow.users" in problem.message
    assert "secret-team" not in problem.message  # other tenants' namespaces are not revealed
    provider.access = None
    out = run(manager.reconcile(ws_with([{"name": "tok", "provider": "mem"}]), None))
    assert provider.counter == 0 and out.problems[0].reason == "PolicyViolation"


def test_credentials_issued_before_the_rule_changed_are_revoked():
    provider = MemoryProvider()
    manager = CredentialManager({"mem": provider}, clock=lambda: T0)
    ws = ws_with([{"name": "tok", "provider": "mem"}])
    first = run(manager.reconcile(ws, None))
    assert provider.live
    provider.access = ledgers.AccessRule(users=("bob",))
    out = run(manager.reconcile(ws, secret_from(first)))
    assert out.data == {} and out.ledger == {} and provider.live == {}
    assert out.problems[0].reason == "PolicyViolation"


def test_kubernetes_token_provider_needs_explicit_service_accounts_and_audiences():
    from workspace_secrets.credentials.providers.kubernetes_token import KubernetesTokenProvider

    def build(config):
        return KubernetesTokenProvider.from_config(name="tokens", config=config, admin={}, kube=None)

    with pytest.raises(ValueError, match="allowedServiceAccounts is required"):
        build({"audiences": ["https://ci"]})
    with pytest.raises(ValueError, match="audiences is required"):
        build({"allowedServiceAccounts": ["ci-*"]})
    provider = build({"allowedServiceAccounts": ["ci-*"], "audiences": ["https://ci", "vault"]})
    assert provider.validate({"serviceAccount": "ci-runner"}) is None
    assert provider.validate({"serviceAccount": "ci-runner", "audiences": "vault"}) is None
    assert "not allowed by provider 'tokens'" in provider.validate({"serviceAccount": "default"})
    refused = provider.validate({"serviceAccount": "ci-runner", "audiences": "vault,https://kubernetes.default.svc"})
    assert "audiences 'https://kubernetes.default.svc' are not allowed" in refused


def test_a_provider_name_read_from_the_tenants_namespace_is_never_a_metric_label():
    """The ledger annotation lives in the tenant's namespace: a removed entry naming a provider that is not
    configured is counted as "unconfigured", not under the name it carries."""
    from prometheus_client import REGISTRY

    def failed(provider: str) -> float:
        return REGISTRY.get_sample_value("wso_credentials_failed_total",
                                         {"provider": provider, "operation": "revoke", "reason": "permanent"}) or 0.0

    tenant_chosen = "tenant-chosen-provider-4f1c"
    out = run(CredentialManager({tenant_chosen: MemoryProvider(tenant_chosen)}, clock=lambda: T0)
              .reconcile(ws_with([{"name": "tok", "provider": tenant_chosen}]), None))
    before = failed("unconfigured")
    manager = CredentialManager({"mem": MemoryProvider()}, clock=lambda: T0)  # that name is not configured here
    out = run(manager.reconcile(ws_with([]), secret_from(out)))
    assert [p.reason for p in out.problems] == ["RevocationFailed"]
    assert failed(tenant_chosen) == 0.0
    assert failed("unconfigured") == before + 1
