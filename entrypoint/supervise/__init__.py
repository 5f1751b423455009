"""`serve` after validation: preflight checks, the run directory, supervisord run as a child until it stops."""
