"""Operator tools: the `selfheal` CLI, attaching to a pool, metrics, Grafana, chaos checks."""
