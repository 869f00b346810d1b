"""Health scoring and the tiered, supervised recovery policy."""
