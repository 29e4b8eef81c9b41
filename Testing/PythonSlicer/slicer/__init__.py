"""A stand-in for the `slicer` package of PythonSlicer (Slicer's Python outside the application),
assembled from slicer-core's own libraries, for tests of the routes that run there: the modules'
background processes and the README's `PythonSlicer -m ...` commands.

PythonSlicer's `slicer` loads the Python-wrapped kits only (Slicer's `Base/Python/slicer/kits.py`):
MRML, segmentation core, base logic, ITK and Teem. The loadable modules' libraries (Volumes,
Segmentations, Markups... logic and MRML) are added by the running application's module
manager, so they are absent here, as in PythonSlicer. Put this folder first on PYTHONPATH.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

KITS = ("vtkITK", "vtkTeem", "vtkSegmentationCore", "MRMLCore", "MRMLCLI", "MRMLLogic",
        "MRMLDisplayableManager", "vtkSlicerBaseLogic")

for _kit in KITS:
    _module = importlib.import_module(f"slicer_core.{_kit}")
    globals().update({name: getattr(_module, name) for name in dir(_module) if not name.startswith("_")})


def _load_util():
    """slicer-core's `slicer/util.py`, as `slicer.util` (PythonSlicer has Slicer's own)."""
    import slicer_core

    site_packages = Path(slicer_core.__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("slicer.util", site_packages / "slicer" / "util.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["slicer.util"] = module
    spec.loader.exec_module(module)
    return module


util = _load_util()
del _kit, _module
