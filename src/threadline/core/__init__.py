"""The bottom layer every domain may use and that uses no domain: errors, request context, ids, page
tokens, time, wire types and encryption. Nothing here imports `threadline.api` or a domain package."""
