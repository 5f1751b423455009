"""Looking at a running appliance from outside supervision: `status`, `healthcheck`, and the snapshot both
`status` and the metrics exporter read."""
