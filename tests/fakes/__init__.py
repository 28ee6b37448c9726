"""Faithful fakes of provider APIs that cannot run locally, checked against their published contracts."""
