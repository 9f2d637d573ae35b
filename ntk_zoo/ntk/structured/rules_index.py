"""Structure rules for indexing primitives (filled in below)."""
