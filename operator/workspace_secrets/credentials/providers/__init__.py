"""Dynamic-credential providers. Adding one = a new module here + one line in registry.py."""
