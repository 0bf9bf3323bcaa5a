"""Public sharing: read-only views of conversations whose owner set `public: true`, without credentials."""
