"""Plan -> supervisord.conf (supervisord_conf.py). The run directory it is written to: entrypoint/rundir.py."""
