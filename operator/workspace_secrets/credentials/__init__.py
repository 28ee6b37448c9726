"""Dynamic credentials: the ledger and plan (pure), the manager that mints/rotates/revokes, the providers."""
