"""Server-Sent Event streams: the hub that wakes them, bounds them per user and ends them on shutdown, the
SSE wire format, and the event stream of a conversation. Below the domains that serve streams (events,
sharing, conversations) and the ones that store what they carry (webhooks): it imports only core and db."""
