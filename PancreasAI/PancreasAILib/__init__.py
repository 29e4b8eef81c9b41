"""Shared core of the PancreasAI extension. Read in this order:

- volume.py, orientation.py, resample.py: a volume is a (K, J, I) array with its IJK-to-RAS
  matrix; reorientation to axial and the one resampler keep that geometry;
- volume_io.py, segmentation_file.py, output_files.py: files in and out, each result written
  whole or not at all;
- weights.py, devices.py: model files (.safetensors with a card and SHA256) and where they run;
- errors.py, progress.py, interrupts.py, cli_support.py: messages a user can act on, progress,
  Ctrl-C, what both command lines share;
- tasks.py, processes.py, runners.py, route.py: running a command line's work in this process or
  in another one, and the one route from the scene to a result and back;
- scene.py, sample_data.py: MRML volumes and scenes (slicer-core is enough), the bundled samples.

Nothing here imports qt, and only scene.py imports slicer or vtk; torch is imported only inside
the functions that need it, so Slicer can load the modules before torch exists.
"""
