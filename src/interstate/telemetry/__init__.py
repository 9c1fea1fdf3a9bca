"""Telemetry: what the Envoys report (stats, access logs, outlier events), read and explained."""
