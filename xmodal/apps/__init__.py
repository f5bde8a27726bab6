"""Uses of a trained model: eval and embed modes, queries, search, prediction, the report."""
