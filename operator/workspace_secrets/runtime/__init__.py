"""Pure decisions: no kopf, no network, clock passed in. Everything here is unit-tested without a cluster."""
