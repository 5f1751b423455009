"""Contract tests: the plan's output read by the real, pinned vLLM and LMCache (CPU only, no GPU).

A package (unlike tests/unit) so that its conftest and helpers never collide with the unit tests'
top-level `conftest` module.
"""
