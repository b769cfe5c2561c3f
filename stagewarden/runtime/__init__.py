"""The attested pipeline-parallel training runtime.

Built so far: the model and its partition into stages (:mod:`stagewarden.runtime.model`), the
deterministic byte-level data (:mod:`stagewarden.runtime.data`), pipeline schedules as plain data
(:mod:`stagewarden.runtime.schedule`), the per-micro-batch training math
(:mod:`stagewarden.runtime.units`) and single-process reference training
(:mod:`stagewarden.runtime.reference`). Import the submodules directly; importing this package
does not load torch.
"""
