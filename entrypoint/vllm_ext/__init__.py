"""Code the appliance loads into vLLM's API server (`vllm serve --middleware ...`): tenant_salt.py.

It runs inside vLLM, so it may import what vLLM's server is built on (Starlette's ASGI types); nothing else in
`entrypoint` imports it (config/ names it by module path only).
"""
