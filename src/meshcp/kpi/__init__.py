"""Golden metrics of the mesh read back from Prometheus: the PromQL (`queries`, pure) and
the HTTP API client (`prometheus`), used by `meshcp stat` and `meshcp edges`."""
