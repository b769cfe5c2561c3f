"""The prover: compiles a threat-model spec to Z3 and returns a verdict for every guarantee."""
