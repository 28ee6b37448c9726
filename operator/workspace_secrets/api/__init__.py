"""Typed views of our CRDs and the names we stamp on the cluster. No I/O."""
