"""The per-user SSH key: one service both CRDs use (WorkspaceSecrets create and rotate it, UserTokens upload it)."""
