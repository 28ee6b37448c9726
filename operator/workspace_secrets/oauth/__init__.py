"""One module per OAuth provider type, all behind `base.OAuthProvider`; `registry` maps spec.type to them."""
