"""The benchmark's scenarios (issue 3): digits, embedder, overload. Each returns
a JSON-ready dict; `loadtests.report` prints and plots them."""
