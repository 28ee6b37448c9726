"""WorkspaceSecret: the per-workspace Secret (SSH key, credentials, user secrets), its binding, status and Events."""
