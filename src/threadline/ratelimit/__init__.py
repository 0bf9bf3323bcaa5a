"""Rate limits per API key: token buckets, kept per process."""
