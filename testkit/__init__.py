"""Helpers shared by the test suite (tests/) and the benchmarks (loadtests/).

fake_vendor: a fake OpenAI-compatible and Anthropic vendor over real HTTP on
loopback, with configurable latency and failures; gateway_process: starts a
gateway (or any server) subprocess and waits until it listens; aio_serving:
the command-line serving loop they share. Not shipped in the wheel
(pyproject.toml packages only gateway*).
"""
