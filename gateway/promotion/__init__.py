"""The promotion gate: a new version of a model is served only after its
signature fits, an offline evaluation on its golden set stays within the
threshold of the serving version, and a canary on a weighted route keeps its
SLO burn and its disagreement with the serving version under the config's
limits (docs/configuration.md#promotion).

- gate.py: the decisions as pure functions of their numbers (injected clock).
- golden.py: golden sets, metrics, the agreement rule.
- candidate.py: which files a promotion swaps; signature check; evaluation.
- canary.py: the canary's config, the watched candidate, the config file edit.
- manager.py: the steps on a running gateway, audited and written to lineage.
"""
