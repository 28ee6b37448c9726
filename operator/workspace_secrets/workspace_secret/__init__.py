"""External systems the operator talks to: dynamic-credential providers and OAuth providers, one module
each behind a small Protocol; OAuth HTTP goes through `providers.http.Transport` (a mock transport in unit tests)."""
