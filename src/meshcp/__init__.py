"""meshcp: a service mesh control plane for Envoy."""

__version__ = "0.1.0"
