"""The environment variables the client reads; outside the client package so the CLI can name them
without importing the client (httpx, pydantic) for `threadline --help`."""

ENV_URL = "THREADLINE_URL"
ENV_API_KEY = "THREADLINE_API_KEY"
