"""The injector's start-up failure, apart from the server that raises it.

The command line names it among the failures it prints as one line; defining it here lets
`meshcp` load without the injector's server and its Kubernetes client (~0.4 s of start-up,
see meshcp.kube.client) for every other command.
"""

from __future__ import annotations


class InjectorError(Exception):
    """The injector cannot start (TLS files, CA, credentials, listener): exit status 1."""
