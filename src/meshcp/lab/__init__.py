"""`meshcp lab`: the whole mesh on one Linux machine, as root.

Each pod is a network namespace and its containers are host processes; meshed pods are
injected by the webhook's own mutation, their init container's iptables rules run for
real in the pod's namespace, and Envoy runs as UID 1500 from the generated bootstrap.
`meshcp serve` runs in a node namespace and watches the lab's rendering of the manifests.

Modules: `layout` (names and paths), `manifests` (reading), `plan` (pure: manifests to
pods, addresses, rules), `network` and `processes` (the machine), `netns_http` (reaching
servers inside namespaces), `supervisor` (the background process), `commands` (the CLI's
side), `demo`.
"""
