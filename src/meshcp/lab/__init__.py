"""`meshcp lab`: the whole mesh on one Linux machine, as root.

Each pod is a network namespace and its containers are host processes; meshed pods are
injected by the webhook's own mutation, their init container's iptables rules run for
real in the pod's namespace, and Envoy runs as UID 1500 from the generated bootstrap.
`meshcp serve` runs in a node namespace and watches the lab's rendering of the manifests.

Pure (manifests to what must run): `plan`, which puts in order `addresses`, `webhook`
(the injector's decision and patch), `kubelet` (containers as processes), `endpoints`,
`kube_proxy` (the DNAT rules) and `hosts` (/etc/hosts); `pods` (what a planned pod is),
`proxy_status` (reading the controller's proxy view), `layout` (names and paths).

I/O: `manifests` (reading the files), `network` and `processes` (the machine),
`netns_http` (reaching servers inside namespaces), `bootstrap_volume` (a sidecar's
files), `pod_runtime` (one running pod), `cluster` (apply and status), `supervisor` (the
background process), `commands` (the CLI's side), `demo`.
"""
