"""The controller's HTTP endpoint: health, readiness, metrics and debug views."""
