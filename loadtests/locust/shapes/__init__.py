"""Load shapes, one a file, each added to a run with -f
(`-f loadtests/locust/locustfile.py,loadtests/locust/shapes/step.py`): locust
runs a shape whenever one is loaded, and then ignores -u, -r and -t."""
