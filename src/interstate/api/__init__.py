"""The HTTP admin API of a running mesh (127.0.0.1 only); the CLI is its main client."""
