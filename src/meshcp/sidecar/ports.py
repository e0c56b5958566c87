"""Every port number (and the UID) that a meshed pod, its injector and the controller agree on.

These numbers hold the mesh together. iptables redirects to the ports Envoy's listeners
bind, the injector points the rewritten probes at the probe listeners, and bootstraps dial
the controller's xDS port. If any two sides disagreed, traffic would go nowhere, so each
number is written here once. The module has no imports: compile, the injector, the lab
and the command line can use it without pulling in anything else.
"""

#: Envoy's admin API (loopback only). The metrics cluster reads Envoy's stats from it.
ADMIN_PORT = 15000
#: Envoy's outbound listener: iptables redirects the application's outgoing TCP here.
OUTBOUND_PORT = 15001
#: Envoy's inbound listener (mTLS): iptables redirects TCP arriving at the pod here.
INBOUND_PORT = 15003
#: Envoy's stats in Prometheus format, without the admin API. Reachable without mTLS.
PROMETHEUS_PORT = 15010
#: The path under which the Prometheus listener serves Envoy's stats; the injector's
#: `prometheus.io/path` annotation names it, so it lives beside the port.
PROMETHEUS_PATH = "/stats/prometheus"
#: The probe listeners, one per kind, where the injector sends kubelet's rewritten probes.
PROBE_PORTS = {"liveness": 15901, "readiness": 15902, "startup": 15903}
#: Envoy runs as this UID. The iptables rules recognise Envoy's own traffic by it.
PROXY_UID = 1500

#: The controller's ADS (gRPC) listener, which sidecars dial.
XDS_PORT = 15128
#: The controller's HTTP listener (health, metrics, debug).
CONTROLLER_HTTP_PORT = 9091
#: The controller's debug endpoints (`/debug/*`), on loopback only by default.
CONTROLLER_DEBUG_PORT = 9092
#: The injector's admission webhook listener.
WEBHOOK_PORT = 9090
