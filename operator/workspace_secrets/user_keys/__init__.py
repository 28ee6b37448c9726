"""The only code that talks to the Kubernetes API: requests, label-selected watches, event posting."""
