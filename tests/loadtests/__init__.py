"""Load tests with locust (loadtests/locust/), run as subprocesses."""
