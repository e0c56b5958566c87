"""What a meshed pod runs next to its application: the Envoy bootstrap, the iptables rules
and the probe listeners, with the port numbers every side agrees on (`ports`). Pure; used
by `meshcp bootstrap`, the injector, the local lab and, for `ports` and `envoy_parts`,
by compile. Imports nothing of compile, which sits above it."""
