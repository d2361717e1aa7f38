"""The main job end to end, shared by ``surfharm harmonize``, ``surfharm apply`` and ``surfharm demo``.

>>> from surfharm.pipeline import SubjectsDirInput, harmonize
>>> source = SubjectsDirInput(subjects_dir="subjects", participants="participants.tsv",
...                           hemis=("lh", "rh"), measure="thickness", level=7)   # doctest: +SKIP
>>> result = harmonize(source, "combat", "harmonized", keep=["age", "sex"])   # doctest: +SKIP
>>> result.reports["lh"]                                                         # doctest: +SKIP

Modules: :mod:`~surfharm.pipeline.inputs` (what is read: one class per input kind, ``SubjectsDirInput``,
``StackedMghInput``, ``RoiTableInput``, ``NiftiInput``), :mod:`~surfharm.pipeline.models`
(build, fit, save and load harmonizers), :mod:`~surfharm.pipeline.outputs` (run folders, metrics,
per-scan maps), :mod:`~surfharm.pipeline.run` (the orchestration), :mod:`~surfharm.pipeline.demo`
(the self-contained demonstration on simulated infant data).
"""
from surfharm.pipeline.inputs import (INPUTS, InputSource, NiftiInput, RoiTableInput, Source, SourceError,
                                      StackedMghInput, SubjectsDirInput, read_cohorts)
from surfharm.pipeline.run import RunResult, apply, harmonize, plan

__all__ = ["INPUTS", "InputSource", "NiftiInput", "RoiTableInput", "RunResult", "Source", "SourceError",
           "StackedMghInput", "SubjectsDirInput", "apply", "harmonize", "plan", "read_cohorts"]
