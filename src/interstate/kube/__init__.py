"""Kubernetes output: pure functions from the mesh model to Kubernetes objects (plain dicts).

Nothing here talks to a cluster; `interstate manifests ...` prints what these return.
"""
