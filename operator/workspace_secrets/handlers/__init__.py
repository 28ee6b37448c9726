"""Thin kopf registrations: an event becomes a controller call. Importing this package registers them."""

from workspace_secrets.handlers import operator, user_token  # noqa: F401
