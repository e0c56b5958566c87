"""The mesh model: immutable Kubernetes and SMI objects, and the state they form. No I/O.

Sources (files, Kubernetes) parse manifests into these objects with `meshcp.model.parse`;
`MeshState` holds one consistent revision of them.
"""
