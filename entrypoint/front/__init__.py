"""The front proxy on vLLM's port (APPLIANCE_FRONT_PROXY; run by programs/front.py): holds requests while vLLM
restarts, sends again what died with it, and continues its streams on the restarted vLLM (continuation.py)."""
