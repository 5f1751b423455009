"""Code the appliance loads into vLLM's API server (`vllm serve --middleware ...`): tenant_salt.py (tenants'
caches kept apart), identity.py (GET /appliance/kv-identity for the coordinator router);
asgi.py (the ASGI types they are annotated with).

Pure ASGI middleware with no import beyond the standard library: config/ names them by module path, and the
coordinator router uses their salt and path definitions.
"""
