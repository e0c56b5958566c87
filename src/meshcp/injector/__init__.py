"""The sidecar injector: a mutating admission webhook (`meshcp inject`).

`mutation` decides and builds the patch (pure), `server` answers the API server over HTTPS,
issues certificates and creates the bootstrap Secret through `kube`, the only module here
that talks to Kubernetes.
"""
