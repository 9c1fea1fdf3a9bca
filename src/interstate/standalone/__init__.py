"""Standalone mode: run the whole mesh on one machine — control plane, apps, side-cars, ingress."""
