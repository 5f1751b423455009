"""Code the appliance loads into LMCache's and vLLM's processes: the LMCache server's pre-warming module
(`lmcache server --server-module ...`: prewarm.py) and vLLM's LMCache connector with the KV identity in every
chunk key (connector.py, salt.py).

prewarm.py and connector.py run inside those processes and may import LMCache and vLLM; config/ names them by
module path only. salt.py is pure (the coordinator router derives the same salts from it).
"""
