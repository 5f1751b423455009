"""The front proxy on vLLM's port (issue 23, in progress): holds requests while vLLM restarts, sends again what
died with it, and continues its streams on the restarted vLLM (continuation.py)."""
