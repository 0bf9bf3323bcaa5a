"""The web console: pages served by Threadline itself (templates and static JS/CSS ship in the package)."""
