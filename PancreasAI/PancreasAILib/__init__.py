"""Shared core of the PancreasAI extension. Read in this order:

- volume.py, orientation.py, resample.py: a volume is a (K, J, I) array with its IJK-to-RAS
  matrix; reorientation to axial and the one resampler keep that geometry;
- volume_io.py, segmentation_file.py, output_files.py: files in and out, each result written
  whole or not at all;
- weights.py, devices.py, cpu.py, engines.py: model files (.safetensors with a card and SHA256),
  where they run, and the engine (OpenVINO, PyTorch) and precision that run them;
- errors.py, progress.py, interrupts.py, cli_support.py: messages a user can act on, progress,
  Ctrl-C, what both command lines share;
- tasks.py, processes.py, runners.py, route.py: running a command line's work in this process or
  in another one, and the one route from the scene to a result and back;
- scene.py, sample_data.py: MRML volumes and scenes (slicer-core is enough), the bundled samples;
- picture.py, dicom_seg.py: pictures a radiologist can read (orientation letters, scale bar),
  and a result as a DICOM Segmentation for the PACS;
- review.py, review_scene.py, review_session.py: a results folder as a worklist, verdicts in
  review.csv, a case in a scene; review_web.py and pancreasai_cli.py: the same in a browser
  (`pancreasai review`).

Nothing here imports qt; slicer and vtk are imported only by scene.py and review_scene.py (and
review_web.py's trame-slicer), and torch, highdicom and trame only inside the functions that need
them, so Slicer can load the modules before any of them exists.
"""
