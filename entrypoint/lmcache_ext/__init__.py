"""Code the appliance loads into LMCache's and vLLM's processes: the LMCache server's pre-warming module
(`lmcache server --server-module ...`: prewarm.py) and vLLM's LMCache connector with the KV identity in every
chunk key (connector.py, salt.py).

Everything here runs inside those processes, so it may import LMCache and vLLM; nothing else in `entrypoint`
imports it (config/ names it by module path only).
"""
