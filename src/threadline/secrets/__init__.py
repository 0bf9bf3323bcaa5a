"""A user's secrets for their agents: stored encrypted, never returned, looked up by the sandbox."""
