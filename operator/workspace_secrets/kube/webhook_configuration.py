"""Reads and writes of the cluster-scoped MutatingWebhookConfiguration the operator owns."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .client import Kube

_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


class MutatingWebhookConfigurations:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    async def get(self, name: str) -> dict[str, Any] | None:
        return await self._kube.get(f"{_PATH}/{quote(name, safe='')}")

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._kube.create(_PATH, body)

    async def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT with the body's resourceVersion: 409 Conflict if the object changed since it was read."""
        return await self._kube.replace(f"{_PATH}/{quote(body['metadata']['name'], safe='')}", body)
