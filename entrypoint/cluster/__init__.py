"""The appliance as a member of a cluster of replicas: the coordinator router (`python -m entrypoint router`)."""
