"""Shared core of the PancreasAI extension: volumes with geometry, resampling, weights.

Nothing here imports slicer, vtk or qt (except mrml.py) and torch is imported only
inside the functions that need it, so Slicer can load the modules before torch exists.
"""
