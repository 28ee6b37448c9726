"""workspace-secrets-operator: per-workspace secrets for developer-workspace platforms, on kopf."""

__version__ = "0.1.0"
