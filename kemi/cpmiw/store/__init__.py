"""Where the data lives: Redis (one connection factory), and the per-worker cache in front of it."""
