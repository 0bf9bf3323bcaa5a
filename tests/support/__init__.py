"""Test support code: a fake OpenAI-compatible LLM server and recorded agent-server samples."""
