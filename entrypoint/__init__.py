"""The appliance's entrypoint: settings -> plan -> render -> supervise (the tree, module by module: README.md).

    cli.py              `python -m entrypoint config|check|serve|status|healthcheck|router`
    config/             settings -> plan (pure: no process started, no file written)
    render/             plan -> supervisord.conf
    rundir.py           the run directory's layout, written by `serve`, read by everyone below
    supervise/          `serve`: preflight, write the run directory, run supervisord
    programs/           what supervisord runs: the launchers, the listeners, gap and metrics
    inspectors/         `status`, `healthcheck` and the snapshot they read
    common/             helpers shared by the above (log lines, supervisord's protocol, HTTP server, ...)
    cluster/            the coordinator router (scale-out)
    lmcache_ext/, vllm_ext/  code loaded into LMCache's and vLLM's own processes
    generators/         the schema and the environment docs, generated; check_lmcache_ops.py: the image build's check
"""
