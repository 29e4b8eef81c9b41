"""PancreasSegMoNet: pancreas segmentation on CT with MoNet (Knolle, Kaissis et al., PLOS ONE 2021).

Read top-down: network.py (MoNet), preprocessing.py (slices the way the network saw them in
training), registry.py (which weights), segmentation.py (CT volume in, mask out), cli.py (the
shell, and the files of a result), pancreas_segment.py (the "Pancreas" segment in a scene),
logic.py (the one route from a volume node to its segment, in this process or another). Nothing
imports torch at package import.
"""
