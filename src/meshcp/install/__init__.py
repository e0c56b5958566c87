"""`meshcp install`, `uninstall` and `check`: the Helm chart's render applied to a cluster with
server-side apply, removed again, and checked, without helm at run time.

`manifests.yaml` is the chart's default render (scripts/render-deploy writes it, a test keeps
it fresh); `manifests` changes the values `--set` may name in it, and a test checks each
against `helm template --set` of the same value.
"""
