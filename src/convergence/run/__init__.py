"""Generation: a study's plan (cells and their hashes), shards, the runner with its
gathered model calls and row budget, and the adaptive search's running part."""
