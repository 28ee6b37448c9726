"""OAuth / OIDC providers that UserTokens use, one module each behind `base.OAuthProvider`; `registry` maps
OAuthApplication spec.type to them. HTTP goes through `runtime.http.Transport`."""
