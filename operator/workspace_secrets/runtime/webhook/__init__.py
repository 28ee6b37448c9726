"""The admission webhook's machinery: PKI, the certificate directory, the MutatingWebhookConfiguration, kopf's server."""
