"""Clients of external certificate authorities (cfssl, Vault).

The only part of `certs` that speaks HTTP itself. aiohttp appears elsewhere in `certs`
only in the Kubernetes-backed parts (`cert_manager`, `kubernetes_store`), to classify the
Kubernetes client's connection errors.
"""
