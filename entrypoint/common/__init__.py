"""Helpers shared by serve, the supervised programs and the inspectors: log lines, supervisord's protocol, the
supervision record, the shared store's probe, the disk tier's prune, the HTTP server."""
