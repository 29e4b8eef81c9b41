"""PancreasSegMoNet: pancreas segmentation on CT with MoNet (Knolle, Kaissis et al., PLOS ONE 2021).

Read top-down: model.py (the network), preprocessing.py (slices the way the network saw them
in training), models.py (which weights), segmentation.py (CT volume in, mask out), mrml.py
(Slicer scene adapter), cli.py (the shell). Nothing imports torch at package import.
"""
