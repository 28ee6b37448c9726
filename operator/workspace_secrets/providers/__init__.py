"""External systems the operator talks to, one module per provider, each behind a small Protocol."""
