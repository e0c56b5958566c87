"""What a process reports about itself: Prometheus metrics and readiness."""
