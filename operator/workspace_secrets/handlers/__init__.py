"""Thin kopf registrations: an event becomes a controller call. Importing this package registers them."""

from . import lifecycle, usertoken, workspacesecret  # noqa: F401
