"""Developer tools, not the operator's runtime: a local anvil devnet with the TNT Core state
(``anvil``), blueprint/operator/service set-up through the real contracts (``setup``), and the
daemon as a subprocess the way the blueprint manager starts it (``stack``).

Used by ``python -m blueprint dev``, the tests and the benchmarks. The runtime SDK
(:mod:`blueprint.tangle`) never imports this package.
"""
