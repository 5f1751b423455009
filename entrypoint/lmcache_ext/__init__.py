"""Code the appliance loads into the LMCache server process (`lmcache server --server-module ...`).

Everything here runs inside LMCache, so it may import LMCache; nothing else in `entrypoint` imports it.
"""
