"""Development tooling: a throwaway local Kubernetes cluster for the tests, the benchmarks and `make run`.

Not part of the operator (it lives outside the operator's package and wheel; `.importlinter` forbids the
operator to import it). It imports nothing of the operator either, so starting a cluster never imports the
code under test.
"""
