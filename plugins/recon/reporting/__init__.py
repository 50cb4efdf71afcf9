"""Read models: the CLI report, the Recon view's queries and the per-run summaries."""
