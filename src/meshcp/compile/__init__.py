"""Pure functions from the mesh's Envoy-free policy to Envoy resources, one module per type.

The type modules (cds, eds, lds, rds, sds) never import each other; names they share
come from `naming`, the sidecar's port numbers from `meshcp.sidecar.ports`, and the Envoy
pieces the sidecar's static config builds too from `meshcp.sidecar.envoy_parts`.
"""
