"""surfharm: harmonization of cortical surface maps across scanners and sites."""
__version__ = "0.1.0"

from surfharm.errors import SurfharmError  # noqa: E402,F401
from surfharm.cohort import Cohort  # noqa: E402,F401
