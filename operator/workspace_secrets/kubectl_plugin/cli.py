"""The `kubectl-wso` executable: argument parsing and the API calls, made with the caller's own kubeconfig
identity (like kubectl: --kubeconfig, --context, -n/--namespace, --as). What is printed is computed in `render`.

Reads: the named WorkspaceSecret or UserToken, its Events, the namespace's WorkspaceSecrets (a UserToken's
users) or UserTokens (`connect` without a name), and a WorkspaceSecret's pods when the caller may list pods.
Writes: one annotation (`rotate`, `refresh`), as a merge patch. Never a Secret: nothing here reads one.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

from workspace_secrets.api import constants as c
from workspace_secrets.kubectl_plugin import render as r

EXAMPLES = f"""\
examples:
  # one screen: conditions, Events, what the workspace gets, what it waits for
  kubectl wso status alice-workspace-secrets              # a WorkspaceSecret (the default kind)
  kubectl wso status usertoken/alice-github -n workspaces

  # rotate your SSH key (every WorkspaceSecret of yours in the namespace follows), and wait for the new key
  kubectl wso rotate alice-workspace-secrets --wait

  # ask for one refresh of an OAuth token now
  kubectl wso refresh alice-github --wait

  # your sign-in link (the operator's connect page); without a name: your UserTokens that need connecting
  kubectl wso connect alice-github
  kubectl wso connect

  # as someone else (impersonation, like kubectl --as), in another context
  kubectl wso status ws/bob-ws --as bob --context prod

The plugin uses your kubeconfig identity only; the annotations it sets are {c.ANNOTATION_ROTATE_SSH_KEY} and
{c.ANNOTATION_REFRESH_TOKEN}. It never reads or prints a Secret.

exit codes: 0 done, 1 error, 2 usage, 3 forbidden (RBAC or an admission policy said no), 4 not found,
5 timed out (--wait)
"""


class Failure(Exception):
    """Ends the command with `code` and `message` on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- the cluster, as the caller -----------------------------------------------------------------------------
class Cluster:
    """The few API calls the plugin makes, as dicts, with the caller's kubeconfig. Errors become Failure."""

    def __init__(self, kubeconfig: str | None, context: str | None, impersonate: str | None,
                 groups: Sequence[str]) -> None:
        from kubernetes import client, config

        if len(groups) > 1:
            raise Failure(r.EXIT_USAGE, "at most one --as-group")
        if groups and not impersonate:
            raise Failure(r.EXIT_USAGE, "--as-group needs --as")
        self._client = client
        configuration = client.Configuration()
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
            self.default_namespace = _context_namespace(config, kubeconfig, context)
        except config.ConfigException as exc:
            if kubeconfig or context:
                raise Failure(r.EXIT_ERROR, f"cannot use the kubeconfig: {r.clean(exc)}") from None
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                raise Failure(r.EXIT_ERROR, f"no kubeconfig found and not in a cluster: {r.clean(exc)}") from None
            self.default_namespace = _incluster_namespace()
        self.api = client.ApiClient(configuration)
        if impersonate:
            self.api.set_default_header("Impersonate-User", impersonate)
        if groups:
            self.api.set_default_header("Impersonate-Group", groups[0])
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def close(self) -> None:
        self.api.close()

    def _call(self, fn: Callable[[], Any], *, verb: str, what: str, namespace: str) -> Any:
        try:
            return fn()
        except self._client.ApiException as exc:
            raise Failure(*r.api_error(exc.status, _message(exc), verb=verb, what=what, namespace=namespace)) from None
        except Exception as exc:  # noqa: BLE001 - connection errors: one clear line, no traceback
            raise Failure(r.EXIT_ERROR, f"cannot reach the cluster: {r.clean(type(exc).__name__)}: {r.clean(exc, 500)}") from None

    def get(self, namespace: str, target: r.Target) -> dict[str, Any]:
        return self._call(lambda: self.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, target.plural, target.name),
                          verb="get", what=str(target), namespace=namespace)

    def list(self, namespace: str, plural: str) -> list[dict[str, Any]]:
        answer = self._call(lambda: self.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, plural),
                            verb="list", what=plural, namespace=namespace)
        return list(answer.get("items") or ())

    def patch(self, namespace: str, target: r.Target, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._call(lambda: self.custom.patch_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, target.plural, target.name, body, _content_type="application/merge-patch+json"),
            verb="patch", what=str(target), namespace=namespace)

    def events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]:
        answer = self._call(lambda: self.core.list_namespaced_event(namespace, field_selector=field_selector, _preload_content=False),
                            verb="list", what="events", namespace=namespace)
        return list(json.loads(answer.data).get("items") or ())

    def pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        answer = self._call(lambda: self.core.list_namespaced_pod(namespace, label_selector=label_selector, _preload_content=False),
                            verb="list", what="pods", namespace=namespace)
        return list(json.loads(answer.data).get("items") or ())

    def whoami(self) -> str | None:
        """The caller's username as the API server sees it (after impersonation): a SelfSubjectReview."""
        try:
            review = self._client.AuthenticationV1Api(self.api).create_self_subject_review(
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
            return review.status.user_info.username
        except Exception:  # noqa: BLE001 - an older API server: the caller is unknown, nothing is filtered
            return None


def _message(exc: Any) -> str:
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    try:
        return str(json.loads(body).get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason or body)


def _context_namespace(config: Any, kubeconfig: str | None, context: str | None) -> str:
    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((x for x in contexts if x.get("name") == context), None) if context else active
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


# --- commands ---------------------------------------------------------------------------------------------------
class Plugin:
    """One invocation: the cluster, the namespace, the caller's workspace user, where output goes."""

    def __init__(self, cluster: Any, namespace: str, out: TextIO, *, for_user: str | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 nonce: Callable[[], str] = lambda: secrets.token_hex(3), sleep: Callable[[float], None] = time.sleep) -> None:
        self.cluster, self.namespace, self.out = cluster, namespace, out
        self.for_user, self.now, self.nonce, self.sleep = for_user, now, nonce, sleep

    def print(self, lines: Sequence[str]) -> None:
        for line in lines:
            print(line, file=self.out)

    def caller(self) -> str | None:
        return self.for_user or self.cluster.whoami()

    def status(self, target: r.Target) -> int:
        obj = self.cluster.get(self.namespace, target)
        uid = (obj.get("metadata") or {}).get("uid")
        events = self.cluster.events(self.namespace, f"involvedObject.uid={uid}") if uid else []
        if target.kind == r.WS_KIND:
            self.print(r.workspace_secret_status(obj, events, self._pods(obj), self.now()))
        else:
            try:
                workspaces: list[dict[str, Any]] | None = self.cluster.list(self.namespace, c.WORKSPACE_SECRET_PLURAL)
            except Failure as exc:
                if exc.code != r.EXIT_FORBIDDEN:
                    raise
                workspaces = None
            self.print(r.user_token_status(obj, events, workspaces, self.now()))
        return r.EXIT_OK

    def _pods(self, ws: Mapping[str, Any]) -> r.PodView:
        """The WorkspaceSecret's pods if the caller may list pods; else the gate's Events on pods."""
        name = (ws.get("metadata") or {}).get("name")
        if not r.requires_gate(ws):
            return r.PodView(())  # its pods never wait at the gate: nothing to look up
        try:
            return r.PodView(tuple(self.cluster.pods(self.namespace, f"{c.LABEL_WORKSPACE_SECRET}={name}")))
        except Failure as exc:
            if exc.code != r.EXIT_FORBIDDEN:
                raise
        try:
            return r.PodView(None, tuple(self.cluster.events(self.namespace, "involvedObject.kind=Pod")))
        except Failure as exc:
            if exc.code != r.EXIT_FORBIDDEN:
                raise
            return r.PodView(None)

    def rotate(self, name: str, *, wait: bool, timeout: float) -> int:
        target = r.Target(r.WS_KIND, name)
        ws = self.cluster.get(self.namespace, target)
        if (refusal := r.rotate_refusal(ws)) is not None:
            raise Failure(r.EXIT_ERROR, refusal)
        before = (ws.get("status") or {}).get("sshKeyFingerprint")
        value = r.request_value(self.now(), self.nonce())
        self.cluster.patch(self.namespace, target, r.annotation_patch(c.ANNOTATION_ROTATE_SSH_KEY, value))
        user = r.clean((ws.get("spec") or {}).get("user"))
        self.print([f"Asked for a new SSH key for user {user!r} ({c.ANNOTATION_ROTATE_SSH_KEY}={value}): every "
                    f"WorkspaceSecret of {user!r} in namespace {self.namespace!r} follows within seconds."])
        if not wait:
            return r.EXIT_OK
        done = self._wait(target, lambda o: r.rotated(o, value) and (o.get("status") or {}).get("sshKeyFingerprint") != before,
                          timeout, "the new key")
        after = (done.get("status") or {}).get("sshKeyFingerprint")
        self.print([f"Rotated: {r.clean(before or '-')} -> {r.clean(after or '-')}"])
        return r.EXIT_OK

    def refresh(self, name: str, *, wait: bool, timeout: float) -> int:
        target = r.Target(r.UT_KIND, name)
        ut = self.cluster.get(self.namespace, target)
        if (refusal := r.refresh_refusal(ut)) is not None:
            raise Failure(r.EXIT_ERROR, refusal)
        value = r.request_value(self.now(), self.nonce())
        self.cluster.patch(self.namespace, target, r.annotation_patch(c.ANNOTATION_REFRESH_TOKEN, value))
        self.print([f"Asked for a refresh of UserToken {name!r} ({c.ANNOTATION_REFRESH_TOKEN}={value})."])
        if not wait:
            return r.EXIT_OK
        done = self._wait(target, lambda o: r.refreshed(o, value), timeout, "the refresh")
        status = done.get("status") or {}
        self.print([f"Refreshed: phase {r.clean(status.get('phase') or '?')}, last refresh "
                    f"{r.clean(status.get('lastRefreshTime') or '-')}, expires {r.clean(status.get('expiresAt') or '-')}"])
        return r.EXIT_OK

    def connect(self, name: str | None) -> int:
        caller = self.caller()
        if name is None:
            tokens = r.needing_connection(self.cluster.list(self.namespace, c.USER_TOKEN_PLURAL), caller)
            self.print(r.connect_list_lines(tokens, caller, self.namespace))
            return r.EXIT_OK
        ut = self.cluster.get(self.namespace, r.Target(r.UT_KIND, name))
        if not r.is_callers(ut, caller):
            owner = r.clean((ut.get("spec") or {}).get("user"))
            raise Failure(r.EXIT_FORBIDDEN, f"UserToken {name!r} is user {owner!r}'s, not yours ({r.clean(caller)!r}): only "
                          f"{owner!r} can connect it (the connect page shows everyone only their own accounts). If your "
                          "workspace user name differs from your Kubernetes user name, pass --for-user.")
        code, lines = r.connect_lines(ut)
        if code != r.EXIT_OK:
            raise Failure(code, lines[0])
        self.print(lines)
        return code

    def _wait(self, target: r.Target, done: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            obj = self.cluster.get(self.namespace, target)
            if done(obj):
                return obj
            if time.monotonic() >= deadline:
                ready = r.condition(obj, c.CONDITION_READY) or {}
                raise Failure(r.EXIT_TIMEOUT, f"timed out after {timeout:g}s waiting for {what} of {target}; Ready: "
                              f"{r.clean(ready.get('status') or '?')} {r.clean(ready.get('reason') or '')} "
                              f"(kubectl wso status {target.plural}/{target.name})")
            self.sleep(0.5)


# --- the command line -------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)")
    common.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context to use")
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's)")
    common.add_argument("--as", dest="as_user", metavar="USER", default=argparse.SUPPRESS, help="act as this user (impersonation, like kubectl --as)")
    common.add_argument("--as-group", dest="as_groups", metavar="GROUP", action="append", default=argparse.SUPPRESS,
                        help="with --as: act as a member of this group (once)")
    main = argparse.ArgumentParser(
        prog="kubectl wso", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Workspace secrets from the workspace user's side: status, SSH key rotation, token refresh, "
                    "sign-in links.", epilog=EXAMPLES)
    sub = main.add_subparsers(dest="command", metavar="COMMAND")
    status = sub.add_parser("status", parents=[common], help="one screen on a WorkspaceSecret or UserToken",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                            description="Conditions (with reasons and messages), recent Events, what the workspace gets "
                                        "(names only, never a value) and what it waits for.")
    status.add_argument("target", metavar="[KIND/]NAME", help="workspacesecret/NAME (ws, wss; the default) or usertoken/NAME (ut)")
    rotate = sub.add_parser("rotate", parents=[common], help="rotate the SSH key of a WorkspaceSecret's user",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                            description=f"Sets {c.ANNOTATION_ROTATE_SSH_KEY} to a new value: the operator generates a new "
                                        "key once and every WorkspaceSecret of that user in the namespace follows.")
    rotate.add_argument("name", metavar="WORKSPACESECRET")
    refresh = sub.add_parser("refresh", parents=[common], help="refresh a UserToken's OAuth token now",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                             description=f"Sets {c.ANNOTATION_REFRESH_TOKEN} to a new value: the operator refreshes the token "
                                         "once (a Device-flow token not connected yet gets a new code).")
    refresh.add_argument("name", metavar="USERTOKEN")
    for cmd in (rotate, refresh):
        cmd.add_argument("--wait", action="store_true", help="wait until the operator has acted on it")
        cmd.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (default: 60)")
    connect = sub.add_parser("connect", parents=[common], help="print your sign-in link for a UserToken",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                             description="With a name: the UserToken's link (the operator's connect page), alone on "
                                         "stdout. Without: your UserTokens in the namespace that need connecting.")
    connect.add_argument("name", metavar="USERTOKEN", nargs="?")
    connect.add_argument("--for-user", default=None,
                         help="your workspace user (spec.user), when it is not your Kubernetes user name")
    return main


def _named(text: str, kind: str) -> str:
    """NAME or KIND/NAME of the one kind a command acts on."""
    target = r.parse_target(text, kind)
    if target.kind != kind:
        raise r.UsageError(f"this command acts on a {kind}, not a {target.kind}")
    return target.name


def run(argv: Sequence[str], *, out: TextIO, err: TextIO, cluster_factory: Callable[..., Any] = Cluster, **plugin_kw: Any) -> int:
    main = parser()
    try:
        args = main.parse_args(list(argv))
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse printed it
        return int(exc.code or 0)
    if not args.command:
        main.print_help(out)
        return r.EXIT_USAGE
    cluster = None
    try:
        target = r.parse_target(args.target) if args.command == "status" else None
        cluster = cluster_factory(getattr(args, "kubeconfig", None), getattr(args, "context", None),
                                  getattr(args, "as_user", None), getattr(args, "as_groups", None) or ())
        namespace = getattr(args, "namespace", None) or cluster.default_namespace
        plugin = Plugin(cluster, namespace, out, for_user=getattr(args, "for_user", None), **plugin_kw)
        if args.command == "status":
            assert target is not None
            return plugin.status(target)
        if args.command in ("rotate", "refresh"):
            kind = r.WS_KIND if args.command == "rotate" else r.UT_KIND
            action = plugin.rotate if args.command == "rotate" else plugin.refresh
            return action(_named(args.name, kind), wait=args.wait, timeout=args.timeout)
        return plugin.connect(_named(args.name, r.UT_KIND) if args.name is not None else None)
    except r.UsageError as exc:
        print(f"error: {exc}", file=err)
        return r.EXIT_USAGE
    except Failure as exc:
        print(f"error: {exc}", file=err)
        return exc.code
    except KeyboardInterrupt:
        return 130
    finally:
        if cluster is not None and hasattr(cluster, "close"):
            cluster.close()


def main() -> None:
    sys.exit(run(sys.argv[1:], out=sys.stdout, err=sys.stderr))


if __name__ == "__main__":
    main()
