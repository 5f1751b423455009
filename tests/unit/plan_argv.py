"""Helpers of the unit tests that read a plan's vLLM command line (imported by name: a module of its own, as
`from conftest import ...` would find whichever suite's conftest was imported first)."""
import json


def kv_transfer(plan):
    argv = plan.vllm.argv
    return json.loads(argv[argv.index("--kv-transfer-config") + 1])


def flag_value(argv, flag):
    assert flag in argv, f"{flag} not in {argv}"
    return argv[argv.index(flag) + 1]
