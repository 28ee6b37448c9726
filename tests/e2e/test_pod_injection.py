"""Pod injection on the real control plane: the real kube-apiserver calls the operator's mutating webhook
over TLS (verified against the caBundle the operator published), for pods the controller-manager creates."""

from __future__ import annotations

import base64
import shlex
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from helpers import Api, wait_for
from kubernetes import client
from kubernetes.client.rest import ApiException

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.webhook import tls


@pytest.fixture
def api(cluster, wso_operator) -> Api:
    if not wso_operator.webhook:
        pytest.skip("the webhook is not reachable from an external cluster without WSO_E2E_WEBHOOK_HOST")
    return Api(cluster.api_client())


def ws_spec(user: str, **extra) -> dict:
    return {"user": user, "workspaceRef": {"kind": "Deployment", "name": f"ws-{user}"}, **extra}


def pod_body(name: str, labels: dict | None = None, annotations: dict | None = None, **spec) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "workspace", "image": "registry.invalid/workspace:1"}], **spec},
    }


def secret_volumes(pod: client.V1Pod) -> list[client.V1Volume]:
    return [v for v in pod.spec.volumes or () if v.secret is not None]


def env_refs(container: client.V1Container) -> dict[str, tuple[str, str] | str]:
    refs: dict[str, tuple[str, str] | str] = {}
    for env in container.env or ():
        ref = env.value_from.secret_key_ref if env.value_from else None
        refs[env.name] = (ref.name, ref.key) if ref else "<literal>"
    return refs


def test_a_labelled_deployments_pods_get_the_secret(api, namespace, wso_operator):
    mount_path = "/home/coder/.workspace-secrets"
    api.create_ws(namespace, "alice", ws_spec("alice", mountPath=mount_path, secretName="alice-secrets"))
    api.wait_condition(namespace, "alice")
    assert api.get_ws(namespace, "alice")["status"]["env"] == [{"name": "GIT_SSH_COMMAND", "key": "GIT_SSH_COMMAND"}]

    template = client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels={"app": "ws-alice", c.LABEL_WORKSPACE_SECRET: "alice", c.LABEL_USER: "alice"},
                                     annotations={c.ANNOTATION_CONTAINERS: "workspace,clone"}),
        spec=client.V1PodSpec(
            security_context=client.V1PodSecurityContext(run_as_user=1000, fs_group=1000),
            init_containers=[client.V1Container(name="clone", image="registry.invalid/git:1")],
            containers=[client.V1Container(name="workspace", image="registry.invalid/workspace:1"),
                        client.V1Container(name="metrics", image="registry.invalid/metrics:1")],
        ),
    )
    api.apps.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="ws-alice", labels={c.LABEL_USER: "alice"}),
        spec=client.V1DeploymentSpec(replicas=2, selector=client.V1LabelSelector(match_labels={"app": "ws-alice"}), template=template),
    ))
    pods = wait_for(lambda: (items := api.core.list_namespaced_pod(namespace, label_selector="app=ws-alice").items) and len(items) == 2 and items,
                    timeout=60, what="the ReplicaSet's two pods")
    secret_data = api.secret_data(namespace, "alice-secrets")
    for pod in pods:
        assert [o.kind for o in pod.metadata.owner_references] == ["ReplicaSet"]  # created by the controller-manager
        [volume] = secret_volumes(pod)
        assert volume.secret.secret_name == "alice-secrets" and volume.secret.default_mode == 0o440 and not volume.secret.items
        containers = {ct.name: ct for ct in [*pod.spec.containers, *pod.spec.init_containers]}
        for name in ("workspace", "clone"):
            mounts = [(m.name, m.mount_path, m.read_only) for m in containers[name].volume_mounts if m.name == volume.name]
            assert mounts == [(volume.name, mount_path, True)]
            assert env_refs(containers[name]) == {"GIT_SSH_COMMAND": ("alice-secrets", "GIT_SSH_COMMAND")}
        assert env_refs(containers["metrics"]) == {}  # not listed in the containers annotation
        assert not [m for m in containers["metrics"].volume_mounts or () if m.name == volume.name]

        # The mounted layout is what GIT_SSH_COMMAND expects: every key is a file under the mount path.
        files = {f"{mount_path}/{key}" for key in secret_data}
        argv = shlex.split(secret_data["GIT_SSH_COMMAND"].decode())
        assert argv[argv.index("-i") + 1] in files
        assert next(a.split("=", 1)[1] for a in argv if a.startswith("UserKnownHostsFile=")) in files


def webhook_entry(api: Api) -> client.V1MutatingWebhook:
    admission = client.AdmissionregistrationV1Api(api.core.api_client)
    [webhook] = admission.read_mutating_webhook_configuration(c.WEBHOOK_CONFIGURATION_NAME).webhooks
    return webhook


def test_the_webhook_configuration_selects_labelled_pods_with_the_published_ca(api, wso_operator):
    webhook = webhook_entry(api)
    assert webhook.object_selector.match_expressions[0].to_dict() == {"key": c.LABEL_WORKSPACE_SECRET, "operator": "Exists", "values": None}
    assert [(r.api_groups, r.resources, r.operations) for r in webhook.rules] == [([""], ["pods"], ["CREATE"])]
    assert webhook.failure_policy == "Fail" and webhook.side_effects == "NoneOnDryRun"
    ca_file = Path(wso_operator.process.log_dir / "webhook-certs" / "ca.crt")
    assert base64.b64decode(webhook.client_config.ca_bundle) == ca_file.read_bytes()
    assert webhook.client_config.url.startswith("https://127.0.0.1:") and webhook.client_config.url.endswith(f"/{c.WEBHOOK_ID}")


def test_a_stale_ca_bundle_is_restored(api, namespace, wso_operator):
    """Someone re-applies the configuration with another caBundle: the API server can no longer verify the
    webhook and labelled pods fail closed, until the operator's resync (20 s in these tests) restores it."""
    api.create_ws(namespace, "erin", ws_spec("erin"))
    admission = client.AdmissionregistrationV1Api(api.core.api_client)
    good = webhook_entry(api).client_config.ca_bundle
    other_ca = base64.b64encode(tls.new_ca(datetime.now(timezone.utc)).cert_pem).decode()
    admission.patch_mutating_webhook_configuration(c.WEBHOOK_CONFIGURATION_NAME, [
        {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": other_ca}])
    labelled = pod_body("erin-ws", labels={c.LABEL_WORKSPACE_SECRET: "erin", c.LABEL_USER: "erin"})

    def dry_run_error() -> ApiException | None:
        try:
            api.core.create_namespaced_pod(namespace, labelled, dry_run="All")
        except ApiException as exc:
            return exc
        return None  # the API server's webhook client may not have the patched caBundle yet

    error = wait_for(dry_run_error, timeout=10, what="the stale caBundle to fail the webhook call")
    assert "failed calling webhook" in error.body and "certificate" in error.body
    wait_for(lambda: webhook_entry(api).client_config.ca_bundle == good, timeout=40, what="the caBundle restored")
    created = wait_for(lambda: _create_or_none(api, namespace, labelled), timeout=15, what="the labelled pod admitted again")
    assert secret_volumes(created)[0].secret.secret_name == "erin"


def _create_or_none(api: Api, namespace: str, body: dict) -> client.V1Pod | None:
    try:
        return api.core.create_namespaced_pod(namespace, body)
    except ApiException as exc:
        if "failed calling webhook" in (exc.body or ""):
            return None  # the API server's webhook client has not caught up yet
        raise


def test_an_unlabelled_pod_is_untouched(api, namespace, wso_operator):
    api.create_ws(namespace, "bob", ws_spec("bob"))
    created = api.core.create_namespaced_pod(namespace, pod_body("plain", labels={"app": "plain"}))
    assert secret_volumes(created) == [] and created.spec.containers[0].env is None
    assert all(m.name.startswith("kube-api-access-") for m in created.spec.containers[0].volume_mounts or ())


def test_a_pod_naming_a_missing_workspace_secret_is_rejected(api, namespace, wso_operator):
    with pytest.raises(ApiException) as error:
        api.core.create_namespaced_pod(namespace, pod_body("orphan", labels={c.LABEL_WORKSPACE_SECRET: "nope"}))
    assert error.value.status == 403
    assert f"WorkspaceSecret 'nope' does not exist in namespace '{namespace}'" in error.value.body
    assert api.core.list_namespaced_pod(namespace).items == []


def test_existing_definitions_are_kept_and_reported(api, namespace, wso_operator, cluster):
    api.create_ws(namespace, "carol", ws_spec("carol"))
    api.wait_condition(namespace, "carol")
    # Mounted by hand already (the README's manual path) and its own GIT_SSH_COMMAND: nothing is doubled
    # (the API server would reject a second mount at the same path) and nothing is overridden.
    manual = pod_body(
        "carol-ws", labels={c.LABEL_WORKSPACE_SECRET: "carol", c.LABEL_USER: "carol"},
        volumes=[{"name": "ssh", "secret": {"secretName": "carol", "defaultMode": 0o440}}],
    )
    manual["spec"]["containers"][0].update(
        volumeMounts=[{"name": "ssh", "mountPath": c.DEFAULT_MOUNT_PATH, "readOnly": True}],
        env=[{"name": "GIT_SSH_COMMAND", "value": "ssh -o StrictHostKeyChecking=no"}],
    )
    out = cluster.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(manual))
    assert "Warning:" in out.stderr and "already defines env var GIT_SSH_COMMAND" in out.stderr
    pod = api.core.read_namespaced_pod("carol-ws", namespace)
    assert [v.name for v in secret_volumes(pod)] == ["ssh"]
    assert env_refs(pod.spec.containers[0]) == {"GIT_SSH_COMMAND": "<literal>"}
    events = wait_for(lambda: [e for e in api.events_for(namespace, "carol") if e.reason == c.EVENT_POD_INJECTION_CONFLICT],
                      what="the conflict Event on the WorkspaceSecret")
    assert "'carol-ws'" in events[0].message and events[0].type == "Warning"


def test_with_the_operator_stopped_unlabelled_pods_are_still_admitted(api, namespace, wso_operator):
    wso_operator.process.stop()
    try:
        api.core.create_namespaced_pod(namespace, pod_body("unrelated"))
        # The webhook stays configured (persistent): a labelled pod fails closed instead of starting
        # without its secrets; its ReplicaSet would retry until the operator is back.
        with pytest.raises(ApiException) as error:
            api.core.create_namespaced_pod(namespace, pod_body("labelled", labels={c.LABEL_WORKSPACE_SECRET: "any"}))
        assert "failed calling webhook" in error.value.body
    finally:
        wso_operator.process.start()  # returns once the webhook answers again
    assert api.core.read_namespaced_pod("unrelated", namespace).metadata.name == "unrelated"


def test_the_example_deployment_gets_its_secret(api, namespace, cluster):
    example = Path(__file__).resolve().parents[2] / "examples" / "workspace-with-pod-injection.yaml"
    cluster.kubectl("apply", "-n", namespace, "-f", str(example))
    api.wait_condition(namespace, "dana-workspace-secrets")
    [pod] = wait_for(lambda: api.core.list_namespaced_pod(namespace, label_selector="app=dana-workspace").items,
                     timeout=60, what="the example's pod")
    [volume] = secret_volumes(pod)
    assert volume.secret.secret_name == "dana-workspace-secrets" and volume.secret.default_mode == 0o440
    [container] = pod.spec.containers
    assert [(m.mount_path, m.read_only) for m in container.volume_mounts if m.name == volume.name] == [("/home/coder/.workspace-secrets", True)]
    assert env_refs(container) == {"GIT_SSH_COMMAND": ("dana-workspace-secrets", "GIT_SSH_COMMAND")}
    api.wait_condition(namespace, "dana-workspace-secrets", type_="WorkspaceBound", timeout=30)  # the Deployment is dana's


def test_a_pod_of_another_user_or_of_nobody_is_refused(api, namespace, wso_operator):
    """The WorkspaceSecret's name proves nothing about whose pod it is: the pod's user label must match its
    spec.user (issue 14, instance 5: a re-created WorkspaceSecret must not reach its old owner's pods)."""
    api.create_ws(namespace, "frank", ws_spec("frank"))
    api.wait_condition(namespace, "frank")
    for labels, found in (({}, "is missing"), ({c.LABEL_USER: "gus"}, "is 'gus'")):
        with pytest.raises(ApiException) as error:
            api.core.create_namespaced_pod(namespace, pod_body("not-franks", labels={c.LABEL_WORKSPACE_SECRET: "frank", **labels}))
        assert error.value.status == 403, error.value.body
        assert f"label {c.LABEL_USER} {found}" in error.value.body and "belongs to user 'frank'" in error.value.body
    assert api.core.list_namespaced_pod(namespace).items == []
    created = api.core.create_namespaced_pod(namespace, pod_body("franks", labels={c.LABEL_WORKSPACE_SECRET: "frank", c.LABEL_USER: "frank"}))
    assert secret_volumes(created)[0].secret.secret_name == "frank"
