"""What both modules' self-tests share: running each test as Slicer's "Reload and Test" does,
skipping where PyTorch is not installed, and the bundled sample data."""

import logging
import unittest
from typing import Callable, Sequence

from .dependencies import missingPackages


def runSelfTests(testCase, tests: Sequence[Callable[[], None]]) -> None:
    """What a module's `runTest` does (Slicer's "Reload and Test" calls it directly, outside a
    test runner): each test after `setUp`. A test that skips itself (unittest.SkipTest: a
    platform it cannot run on, PyTorch not installed) is logged and the others still run; if
    every test skipped, the skip is raised for a test runner (ctest) to report."""
    skipped = []
    for test in tests:
        testCase.setUp()
        try:
            test()
        except unittest.SkipTest as reason:
            logging.warning("Skipped %s: %s", test.__name__, reason)
            skipped.append(f"{test.__name__}: {reason}")
    if skipped and len(skipped) == len(tests):
        raise unittest.SkipTest("; ".join(skipped))


def requireDependencies(testCase) -> None:
    """Skip (not fail) where PyTorch or timm is not installed, as on extension build servers."""
    missing = missingPackages()
    if missing:
        testCase.skipTest(f"needs {', '.join(missing)} (install the PyTorch extension, then click Apply once)")
