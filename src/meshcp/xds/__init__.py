"""The ADS server: SotW and delta protocol state machines and the grpclib adapter.

`sotw` and `delta` are pure: they turn requests and snapshots into framed responses.
Only `service` and `server` know grpclib.
"""
