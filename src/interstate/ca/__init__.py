"""The mesh CA: a root (created on first start, or the operator's own), SPIFFE workload
certificates (X.509-SVIDs) and the rotation schedule. Knows nothing of Envoy."""
