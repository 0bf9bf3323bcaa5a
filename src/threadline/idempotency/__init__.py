"""Idempotency-Key for requests that create or start something."""
