"""Pod injection: the mutating webhook mounts a WorkspaceSecret into pods that carry the opt-in label."""
