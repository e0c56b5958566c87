"""The Envoy-free intermediate form: what each proxy class may reach and accept.

`build.build_policies(state)` turns one MeshState into proxy classes and their policies;
`compile/*` turns a policy into Envoy resources. Nothing here knows Envoy types.
"""
