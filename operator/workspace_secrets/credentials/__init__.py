"""Read -> decide (domain) -> write. No kopf here: handlers call in, and so does the Secret watch."""
