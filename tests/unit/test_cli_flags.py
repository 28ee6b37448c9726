"""`workspace-secrets-operator run`'s flags: controller-runtime's names, every flag from a WSO_* environment variable,
every default in --help, the deprecated spellings still working; and `crds` printing the CRDs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from workspace_secrets import cli

REPO = Path(__file__).resolve().parents[2]


def run_parser(monkeypatch: pytest.MonkeyPatch | None = None, **env: str) -> argparse.ArgumentParser:
    if monkeypatch is not None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    subcommands = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices["run"]


def parse(*args: str) -> argparse.Namespace:
    return cli._parser().parse_args(["run", *args])


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_controller_runtime_flag_names_exist():
    flags = set(run_parser()._option_string_actions)
    for flag in ("--metrics-bind-address", "--health-probe-bind-address", "--leader-elect", "--leader-election-id",
                 "--leader-election-namespace", "--leader-election-lease-duration", "--leader-election-renew-deadline",
                 "--leader-election-retry-period", "--log-level", "--webhook-cert-manager-certificate"):
        assert flag in flags


def _env_value(action: argparse.Action) -> tuple[str, object]:
    """A value for the action's environment variable and what the parsed flag must then be."""
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        return "true", True
    if isinstance(action, argparse._AppendAction):
        return "team-a, team-b", ["team-a", "team-b"]
    if action.choices:
        choice = list(action.choices)[-1]
        return choice, choice
    if action.type is int:
        return "7", 7
    if action.type is float:
        return "7.5", 7.5
    if action.type is cli.duration:
        return "1m30s", 90.0
    return "ns/name", "ns/name"


def test_every_flag_is_read_from_its_environment_variable(monkeypatch):
    actions = options(run_parser())
    names = {}
    for action in actions:
        name = cli.env_name(action)
        assert name is not None and name.startswith("WSO_"), action.option_strings
        first_long = next(flag for flag in action.option_strings if flag.startswith("--"))  # --x, not --no-x
        assert name == "WSO_" + first_long[2:].upper().replace("-", "_")
        names[name] = action
    assert {"WSO_LEADER_ELECT", "WSO_METRICS_PORT", "WSO_METRICS_ADDRESS", "WSO_LIVENESS", "WSO_LOG_FORMAT",
            "WSO_PROVIDERS_CONFIG", "WSO_CONNECT_PORT", "WSO_NAMESPACE"} <= set(names)  # the old names keep working
    for name, action in names.items():
        raw, expected = _env_value(action)
        with monkeypatch.context() as m:
            m.setenv(name, raw)
            parsed = cli._parser().parse_args(["run"])
        assert getattr(parsed, action.dest) == expected, name


def test_the_command_line_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("WSO_WORKERS", "3")
    monkeypatch.setenv("WSO_LEADER_ELECT", "true")
    assert parse().workers == 3 and parse().leader_elect is True
    assert parse("--workers", "5", "--no-leader-elect").workers == 5
    assert parse("--no-leader-elect").leader_elect is False


def test_a_bad_environment_value_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("WSO_LEADER_ELECT", "maybe")
    with pytest.raises(SystemExit):
        parse()
    assert "WSO_LEADER_ELECT='maybe': expected true or false" in capsys.readouterr().err
    monkeypatch.setenv("WSO_LEADER_ELECT", "false")
    monkeypatch.setenv("WSO_LOG_LEVEL", "chatty")
    with pytest.raises(SystemExit):
        parse()


def test_the_environment_is_read_for_run_only(monkeypatch, capsys):
    """A bad WSO_* variable (meant for the operator's container) does not break `crds`."""
    monkeypatch.setenv("WSO_VERBOSE", "very")
    monkeypatch.setenv("WSO_LOG_LEVEL", "chatty")
    assert cli.main(["crds"]) == 0
    assert "CustomResourceDefinition" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse()


def test_the_command_line_replaces_the_environments_list(monkeypatch):
    monkeypatch.setenv("WSO_NAMESPACE", "a,b")
    assert parse().namespaces == ["a", "b"]
    assert parse("-n", "c").namespaces == ["c"]
    assert parse("-n", "c", "--namespace", "d").namespaces == ["c", "d"]
    monkeypatch.delenv("WSO_NAMESPACE")
    assert parse().namespaces == []
    assert parse("-n", "c", "-n", "d").namespaces == ["c", "d"]
    assert parse().namespaces == []  # the default list is never appended to


def test_an_explicit_flag_beats_any_variable_and_any_alias(monkeypatch):
    # -v / WSO_VERBOSE against --log-level
    monkeypatch.setenv("WSO_VERBOSE", "true")
    assert cli._log_level(parse("--log-level=warning")) == "warning"
    assert cli._log_level(parse()) == "debug"
    assert cli._log_level(parse("-v", "--log-level=warning")) == "debug"  # both on the command line: -v as before
    monkeypatch.setenv("WSO_LOG_LEVEL", "error")
    assert cli._log_level(parse()) == "debug"  # both variables: as before
    assert cli._log_level(parse("-v")) == "debug"
    monkeypatch.delenv("WSO_VERBOSE")
    assert cli._log_level(parse()) == "error"
    # --liveness / WSO_LIVENESS against --health-probe-bind-address
    monkeypatch.setenv("WSO_LIVENESS", "http://0.0.0.0:8282/alive")
    assert cli._health_bind(parse()) == (("0.0.0.0", 8282), "/alive")  # the alias beats a default
    assert cli._health_bind(parse("--health-probe-bind-address", "127.0.0.1:8181")) == (("127.0.0.1", 8181), "/healthz")
    monkeypatch.setenv("WSO_HEALTH_PROBE_BIND_ADDRESS", ":8383")
    assert cli._health_bind(parse()) == (("", 8383), "/healthz")  # a tie: the flag
    assert cli._health_bind(parse("--liveness", "http://127.0.0.1:8484/healthz")) == (("127.0.0.1", 8484), "/healthz")
    assert cli._health_bind(parse("--liveness", "http://127.0.0.1:8484/healthz", "--health-probe-bind-address",
                                  ":8585")) == (("", 8585), "/healthz")
    # --metrics-port / --metrics-address against --metrics-bind-address
    monkeypatch.setenv("WSO_METRICS_PORT", "9292")
    assert cli._metrics_bind(parse()) == ("", 9292)
    assert cli._metrics_bind(parse("--metrics-bind-address", "127.0.0.1:9100")) == ("127.0.0.1", 9100)
    assert cli._metrics_bind(parse("--metrics-bind-address", "0")) is None
    assert cli._metrics_bind(parse("--metrics-port", "9191", "--metrics-bind-address", "127.0.0.1:9100")) == (
        "127.0.0.1", 9100)
    assert cli._metrics_bind(parse("--metrics-address", "10.0.0.1", "--metrics-bind-address", ":9100")) == (
        "", 9100)
    monkeypatch.setenv("WSO_METRICS_BIND_ADDRESS", ":9393")
    assert cli._metrics_bind(parse()) == ("", 9393)  # a tie: the flag
    assert cli._metrics_bind(parse("--metrics-port", "9191")) == ("", 9191)


def test_operator_namespace_falls_back_to_pod_namespace(monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", "from-pod")
    assert parse().operator_namespace == "from-pod"
    monkeypatch.setenv("WSO_OPERATOR_NAMESPACE", "from-env")
    assert parse().operator_namespace == "from-env"


def test_every_visible_flag_shows_its_default_and_its_environment_variable():
    parser = run_parser()
    formatter = cli._HelpFormatter("run")
    hidden = {"--liveness", "--metrics-port", "--metrics-address", "--api-client"}
    for action in options(parser):
        if action.help is argparse.SUPPRESS:
            assert set(action.option_strings) & hidden, f"{action.option_strings} is hidden"
            continue
        text = formatter._get_help_string(action)
        assert "default" in text, action.option_strings
        assert f"[env {cli.env_name(action)}]" in text
    rendered = parser.format_help()
    for flag in hidden:
        assert flag not in rendered
    assert "(default: :8080)" in rendered and "(default: :9090)" in rendered
    assert "(default: 15s)" in rendered and "(default: 10s)" in rendered and "(default: 2s)" in rendered


def test_metrics_bind_address_and_the_deprecated_port_and_address(monkeypatch):
    assert cli._metrics_bind(parse()) == ("", 9090)
    assert cli._metrics_bind(parse("--metrics-bind-address", "127.0.0.1:9100")) == ("127.0.0.1", 9100)
    assert cli._metrics_bind(parse("--metrics-bind-address", "[::1]:9100")) == ("::1", 9100)
    assert cli._metrics_bind(parse("--metrics-bind-address", "0")) is None
    assert cli._metrics_bind(parse("--metrics-port", "9191")) == ("", 9191)
    assert cli._metrics_bind(parse("--metrics-port", "9191", "--metrics-address", "127.0.0.1")) == ("127.0.0.1", 9191)
    assert cli._metrics_bind(parse("--metrics-port", "0")) is None
    monkeypatch.setenv("WSO_METRICS_PORT", "9292")
    assert cli._metrics_bind(parse()) == ("", 9292)
    with pytest.raises(SystemExit, match="--metrics-bind-address"):
        cli._metrics_bind(parse("--metrics-bind-address", "localhost"))


def test_health_probe_bind_address_and_the_deprecated_liveness_url():
    assert cli._health_bind(parse()) == (("", 8080), "/healthz")  # "": every address family (IPv6-only clusters)
    assert cli._health_bind(parse("--health-probe-bind-address", "0.0.0.0:8080")) == (("0.0.0.0", 8080), "/healthz")
    assert cli._health_bind(parse("--health-probe-bind-address", "[::]:8080")) == (("::", 8080), "/healthz")
    assert cli._health_bind(parse("--health-probe-bind-address", "127.0.0.1:8181")) == (("127.0.0.1", 8181), "/healthz")
    assert cli._health_bind(parse("--health-probe-bind-address", "0"))[0] is None
    assert cli._health_bind(parse("--liveness", "http://127.0.0.1:8282/healthz")) == (("127.0.0.1", 8282), "/healthz")
    assert cli._health_bind(parse("--liveness", "http://0.0.0.0:8080/alive")) == (("0.0.0.0", 8080), "/alive")
    assert cli._health_bind(parse("--liveness", ""))[0] is None
    with pytest.raises(SystemExit):
        cli._health_bind(parse("--health-probe-bind-address", ":http"))
    for bad in ("http://127.0.0.1:http/healthz", "http://127.0.0.1:99999/healthz", "http://[::1/healthz",
                "https://127.0.0.1:8080/healthz", "http://127.0.0.1/healthz"):
        with pytest.raises(SystemExit, match=r"--liveness \(deprecated\): expected http://HOST:PORT/PATH"):
            cli._health_bind(parse("--liveness", bad))


def test_leader_election_settings():
    off = cli._leader_election_config(parse("--operator-namespace", "ops"))
    assert off.enabled is False and off.namespace == "ops"
    on = cli._leader_election_config(parse("--leader-elect", "--operator-namespace", "ops"))
    assert (on.enabled, on.id, on.namespace, on.lease_duration, on.renew_deadline, on.retry_period) == (
        True, "workspace-secrets-operator", "ops", 15.0, 10.0, 2.0)
    custom = cli._leader_election_config(parse(
        "--leader-elect", "--leader-election-namespace", "elsewhere", "--leader-election-id", "wso",
        "--leader-election-lease-duration", "1m", "--leader-election-renew-deadline", "40s",
        "--leader-election-retry-period", "500ms"))
    assert (custom.namespace, custom.id, custom.lease_duration, custom.renew_deadline, custom.retry_period) == (
        "elsewhere", "wso", 60.0, 40.0, 0.5)
    with pytest.raises(SystemExit, match="lease duration > renew deadline"):
        cli._leader_election_config(parse("--leader-elect", "--leader-election-renew-deadline", "20s"))
    # The leader gives up at the latest a retry period + the renew deadline after its last renewal.
    with pytest.raises(SystemExit, match=r"lease duration > renew deadline \+ retry period, got 15s <= 10s \+ 5s"):
        cli._leader_election_config(parse("--leader-elect", "--leader-election-retry-period", "5s"))
    assert cli._leader_election_config(parse("--leader-elect", "--leader-election-retry-period", "4.9s")).enabled
    with pytest.raises(SystemExit, match="positive, finite"):
        cli._leader_election_config(parse("--leader-elect", "--leader-election-retry-period", "0"))
    for bad in ("inf", "nan", "-1", "infinity"):
        with pytest.raises(SystemExit):  # argparse: not a duration
            parse("--leader-elect", "--leader-election-lease-duration", bad)
    with pytest.raises(SystemExit, match="choose one"):
        cli._leader_election_config(parse("--leader-elect", "--peering", "wso"))
    assert cli._leader_election_config(parse("--peering", "wso")).enabled is False  # deprecated, still accepted


@pytest.mark.parametrize(("text", "seconds"), [("15", 15.0), ("15s", 15.0), ("1.5s", 1.5), ("2m", 120.0),
                                               ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0)])
def test_durations(text, seconds):
    assert cli.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "fast", "1d", "-", "inf", "nan", "-inf", "-5", "1e999"])
def test_bad_durations(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.duration(text)


def test_log_level_and_verbose():
    assert parse().log_level == "info"
    assert parse("--log-level", "warning").log_level == "warning"
    assert parse("-v").verbose is True
    with pytest.raises(SystemExit):
        parse("--log-level", "trace")


def test_webhook_cert_manager_certificate():
    config = cli._webhook_config(parse("--webhook", "--webhook-cert-manager-certificate", "ops/wso-webhook"))
    assert config.cert_manager_certificate == ("ops", "wso-webhook")
    assert cli._webhook_config(parse("--webhook")).cert_manager_certificate is None
    for bad in ("just-a-name", "a/b/c", "/name", "ns/"):
        with pytest.raises(SystemExit, match="NAMESPACE/NAME"):
            cli._webhook_config(parse("--webhook-cert-manager-certificate", bad))


def _documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_crds_prints_every_crd_of_the_source_tree(capsys):
    assert cli.main(["crds"]) == 0
    printed = _documents(capsys.readouterr().out)
    expected = [d for path in sorted((REPO / "crds").glob("*.yaml")) for d in _documents(path.read_text())]
    assert printed == expected
    assert {d["kind"] for d in printed} == {"CustomResourceDefinition"}
    assert {"workspacesecrets.workspace-secrets.io", "usertokens.workspace-secrets.io"} <= {d["metadata"]["name"] for d in printed}


def test_the_package_data_is_the_source_tree_crds():
    """operator/workspace_secrets/crds is a symlink to crds/ (the one source), so the two never differ."""
    link = REPO / "operator" / "workspace_secrets" / "crds"
    assert link.is_symlink() and link.resolve() == (REPO / "crds").resolve()


def test_kubernetes_service_links_are_not_read_as_settings(monkeypatch, caplog):
    # A Service named `wso-metrics` (or `wso-connect`) in the operator's namespace makes kubelet inject
    # WSO_METRICS_PORT=tcp://IP:PORT: ignored (with a warning), not a crash loop on "invalid int value".
    monkeypatch.setenv("WSO_METRICS_PORT", "tcp://10.96.0.7:9090")
    monkeypatch.setenv("WSO_CONNECT_PORT", "tcp://10.96.0.8:8081")
    parsed = cli._parser().parse_args(["run"])
    assert parsed.metrics_port == run_parser().get_default("metrics_port")
    assert parsed.connect_port == run_parser().get_default("connect_port")
    assert "service link" in caplog.text and "10.96.0.7" not in caplog.text
