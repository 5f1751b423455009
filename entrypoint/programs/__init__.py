"""What supervisord runs (each module a `python -m entrypoint.programs.NAME PLAN_FILE` command line that
render/supervisord_conf.py writes): the servers' launchers, the listeners and the appliance's own small programs."""
