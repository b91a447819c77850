"""Locust load tests of the gateway (docs/load-testing.md).

`locustfile.py` is what locust loads; `shapes/` holds the optional load shapes,
each a file of its own so that a run without one keeps -u/-r/-t. The modules
that do not import locust (entries, plans, verdict, checks, data, selection)
are what the test suite imports: locust monkey-patches the standard library
with gevent when imported, so the suite only ever runs it as a subprocess.
"""
