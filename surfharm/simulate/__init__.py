"""Multi-site cohorts with known truth, built on real anatomy (nilearn's fsaverage5 thickness).

>>> from surfharm.simulate import preset, simulate_cohort
>>> sim = simulate_cohort(preset("quick", seed=1))
>>> sim.maps.shape == sim.truth.shape            # observed and site-free maps, row by row
True

See :mod:`surfharm.simulate.generate` (the model), :mod:`surfharm.simulate.sites` (scanner
effects) and :mod:`surfharm.simulate.presets` (named scenarios).
"""
from surfharm.simulate.generate import (
    ScannerChange,
    SimulatedCohort,
    SimulationConfig,
    SiteSpec,
    simulate_cohort,
)
from surfharm.simulate.presets import PRESETS, preset
from surfharm.simulate.sites import SiteEffect

__all__ = ["PRESETS", "ScannerChange", "SimulatedCohort", "SimulationConfig", "SiteEffect", "SiteSpec",
           "preset", "simulate_cohort"]
