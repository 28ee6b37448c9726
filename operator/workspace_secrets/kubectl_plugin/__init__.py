"""`kubectl wso`: a kubectl plugin for workspace users (status, rotate, refresh, connect), in the style of
cert-manager's cmctl. Installed with the Python package as the executable `kubectl-wso`.

It acts only with the caller's own kubeconfig identity (never the operator's) and reads only what `kubectl get`
would show them: WorkspaceSecrets, UserTokens, Events (and pods, where the caller may list them). It never reads a
Secret. `render` is pure (object dicts in, lines out); `main` does the I/O.
"""
