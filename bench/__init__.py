"""dgmbench harness: datasets, the training loop, evaluation, aggregation and the CLI."""
