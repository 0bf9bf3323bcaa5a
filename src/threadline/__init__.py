"""Threadline: a self-hostable server for the OpenHands App Conversations API (v1)."""

__version__ = "0.1.0"
