"""--webhook-cert-manager-certificate on the real API server: the operator annotates its MutatingWebhookConfiguration
`cert-manager.io/inject-ca-from` and leaves caBundle to cert-manager.

cert-manager itself is not run here: the test plays its two parts faithfully -- the Certificate's Secret (a
kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt, mounted at --webhook-cert-dir as the kubelet would) and
the cainjector (which writes the Certificate's CA into caBundle of every object annotated inject-ca-from). Then the
API server calls the webhook with that CA, and the caBundle someone else set survives the operator's resyncs, also
when the operator repairs another field of the object.
"""

from __future__ import annotations

import base64
import secrets
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from helpers import webhook_answers, wait_for
from operator_process import OperatorProcess, free_port
from workspace_secrets.runtime.webhook import tls

RESYNC = 3.0


def readyz(process: OperatorProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/readyz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_the_injected_ca_bundle_is_cert_managers(cluster, namespace, tmp_path):
    api_client = cluster.api_client()
    core, admission = k8s.CoreV1Api(api_client), k8s.AdmissionregistrationV1Api(api_client)
    configuration = f"wso-e2e-cert-manager-{secrets.token_hex(3)}"
    # The Certificate's Secret, as cert-manager issues it, and its mount.
    now = datetime.now(timezone.utc)
    ca = tls.new_ca(now)
    serving = tls.issue(ca, ["127.0.0.1"], now)
    data = {"tls.crt": serving.cert_pem, "tls.key": serving.key_pem.reveal(), "ca.crt": ca.cert_pem}
    core.create_namespaced_secret(namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="wso-webhook-tls", annotations={"cert-manager.io/certificate-name": "wso-webhook"}),
        type="kubernetes.io/tls", data={k: base64.b64encode(v).decode() for k, v in data.items()}))
    cert_dir = tmp_path / "webhook-tls"
    cert_dir.mkdir()
    for name, value in data.items():
        (cert_dir / name).write_bytes(value)
    operator = OperatorProcess(
        str(cluster.kubeconfig), tmp_path / "operator", "--namespace", namespace, "--webhook", "--webhook-host", "127.0.0.1",
        "--webhook-port", str(free_port()), "--webhook-cert-dir", str(cert_dir), "--webhook-configuration", configuration,
        "--webhook-cert-manager-certificate", f"{namespace}/wso-webhook", "--resync-interval", f"{RESYNC:g}")
    try:
        operator.start()
        live = wait_for(lambda: _get(admission, configuration), timeout=30, what="the webhook configuration")
        assert live.metadata.annotations["cert-manager.io/inject-ca-from"] == f"{namespace}/wso-webhook"
        assert not live.webhooks[0].client_config.ca_bundle, "the operator must not write caBundle"
        wait_for(lambda: readyz(operator) == 200, timeout=30, what="/readyz with the webhook serving")

        # cert-manager's cainjector fills caBundle from the Certificate's CA: the API server then reaches the webhook.
        # (With a second CA in the bundle, as during a CA rotation: a value the operator itself would never write.)
        injected = base64.b64encode(ca.cert_pem + tls.new_ca(now).cert_pem).decode()
        admission.patch_mutating_webhook_configuration(configuration, [
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": injected}])
        wait_for(lambda: webhook_answers(api_client, namespace), timeout=30, what="the API server to call the webhook")
        version = _get(admission, configuration).metadata.resource_version

        time.sleep(3 * RESYNC)  # several resyncs: nothing drifted in what the operator owns, nothing written
        live = _get(admission, configuration)
        assert live.metadata.resource_version == version
        assert live.webhooks[0].client_config.ca_bundle == injected

        # Another field drifts: the operator repairs it and carries the injected caBundle over unchanged.
        admission.patch_mutating_webhook_configuration(configuration, [
            {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}])
        live = wait_for(lambda: (c := _get(admission, configuration)) and c.webhooks[0].failure_policy == "Fail" and c,
                        timeout=5 * RESYNC, what="the operator to repair failurePolicy")
        assert live.webhooks[0].client_config.ca_bundle == injected
        assert live.metadata.annotations["cert-manager.io/inject-ca-from"] == f"{namespace}/wso-webhook"
        assert webhook_answers(api_client, namespace)
        assert "caBundle injected by cert-manager" in operator.log_text()
    finally:
        operator.stop()
        try:
            admission.delete_mutating_webhook_configuration(configuration)
        except ApiException as exc:
            if exc.status != 404:
                raise
        api_client.close()


def _get(admission: k8s.AdmissionregistrationV1Api, name: str):
    try:
        return admission.read_mutating_webhook_configuration(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
