"""Clients of external services (OAuth providers, Vault), each behind a small interface, with all HTTP
behind `providers.http.Transport` so unit tests use a mock transport and e2e tests real servers."""
