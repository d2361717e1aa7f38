"""The harmonizer registry: every built-in name is listed, and torch loads only when S2SGAN is asked for."""
import subprocess
import sys

import pytest

from surfharm import harmonize


def test_importing_harmonize_does_not_load_torch():
    code = ("import sys, surfharm.harmonize as h; h.get('combat'); "
            "print('torch' in sys.modules, 's2sgan' in h.available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_lazy_s2sgan_resolves_to_the_registered_class():
    cls = harmonize.get("s2sgan")
    assert cls is harmonize.S2SGAN and cls.registry_name == "s2sgan"


def test_unknown_name_lists_every_available_method():
    with pytest.raises(KeyError, match="s2sgan") as err:
        harmonize.get("no-such-method")
    assert "combat" in str(err.value)
