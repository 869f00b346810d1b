"""The batch driver: inputs, runs, the results schema, summaries."""
