"""A kubernetes-asyncio client for the process: in a pod, its service account; else a
kubeconfig file. One place, for the Lease backend and the Kubernetes config source."""

from __future__ import annotations

import os

from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

from dispatcher.errors import ConfigurationError


async def kube_client(*, kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """In a pod and without ``kubeconfig``: the service account's credentials;
    otherwise the kubeconfig file (default ``~/.kube/config``) and its context."""
    configuration = Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            # The library leaves this function unannotated.
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await kube_config.load_kube_config(
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (kube_config.ConfigException, OSError) as exc:
        raise ConfigurationError(f"No usable Kubernetes client configuration: {exc}") from exc
    return ApiClient(configuration)
