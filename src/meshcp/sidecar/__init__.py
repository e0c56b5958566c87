"""What a meshed pod runs next to its application: the Envoy bootstrap and (later) the
iptables rules. Pure; used by `meshcp bootstrap`, the injector and the local lab."""
