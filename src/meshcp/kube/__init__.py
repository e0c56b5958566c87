"""The Kubernetes API client as every part of meshcp that talks to a cluster makes it: the
source, the injector and the Kubernetes-backed certificate providers."""
