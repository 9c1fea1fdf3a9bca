"""Autoscaling for standalone mode: `algorithm` is the pure Kubernetes HPA decision, no I/O."""
