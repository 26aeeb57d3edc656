"""The ``dgm`` package namespace: subpackages load on first access, as the README uses them."""

import subprocess
import sys

_PROBE = """
import dgm
print(dgm.diagnostics.ChainDisagreementWarning.__name__, dgm.models.__name__, dgm.bvh.__name__)
for name in ("nope", "_secret"):
    try:
        getattr(dgm, name)
    except AttributeError as err:
        print(err)
"""


def test_subpackages_load_on_first_access():
    """``import dgm`` then ``dgm.diagnostics.ChainDisagreementWarning`` (the README's filter
    for chain warnings) works in a fresh interpreter; unknown names still raise."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "ChainDisagreementWarning dgm.models dgm.bvh",
        "module 'dgm' has no attribute 'nope'",
        "module 'dgm' has no attribute '_secret'",
    ]
