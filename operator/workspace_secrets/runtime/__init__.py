"""Machinery that knows no feature (kopf's _cogs): the Kubernetes client, the label-selected watch, rate limit,
work queue, Events, peering, the admission webhook's server/certificates/configuration, metrics, HTTP transport."""
