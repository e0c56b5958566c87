"""Where mesh objects come from: a directory of manifests, or the Kubernetes API.

Every source emits the same events (`events`), so the store and compiler do not know
which one is running.
"""
