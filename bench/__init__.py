"""The appliance's benchmark tools and the GPU suites' runner: `python -m bench.<tool>` from the repository root.

Not part of the product: pyproject.toml installs `entrypoint*` only, and .dockerignore (an allowlist) keeps this
folder, and the raw results under bench/runs/, out of the image's build context and its inputs hash. The tools
import the appliance's own code (entrypoint.*) for what they share with it: the Prometheus text parser
(prometheus_client's) and the supervisord XML-RPC transport. bench/suite.py runs the GPU suites
(docs/benchmarks/METHOD.md).
"""
