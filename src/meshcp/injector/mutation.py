"""Transitional: the injector's mutation now lives in modules named for each job (`review`,
`decision`, `pod_patch`, `probe_rewrite`, `bootstrap_secret`, `template`, `patch_ops`).

Only what callers outside the injector package still import from here is re-exported:
`tests/test_deploy_manifests.py` imports SYSTEM_NAMESPACES. Delete this module once it
imports `meshcp.injector.decision` instead.
"""

from meshcp.injector.decision import SYSTEM_NAMESPACES

__all__ = ["SYSTEM_NAMESPACES"]
