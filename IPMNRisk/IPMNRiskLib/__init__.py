"""IPMNRisk: IPMN risk (normal / low-risk / high-risk) from paired T1/T2 MRI with an early-fusion
Vision Transformer and its attention rollout (Proietto Salanitri et al., EMBC 2022). For research
use only.

Read top-down: network.py (the ViT), grids.py (the region, its crop and the 3 x 3 grid of nine
axial slices), preprocessing.py (intensities as in training), registry.py (which weights),
tta.py and rollout.py (test-time views, attention maps), inference.py (T1, T2 and a region in;
class, probabilities and heat map out), summary.py (the result as plain data), cli.py (the shell,
and the files of a result), colormap.py and result_nodes.py (the result in a scene), logic.py
(the one route from the volume nodes to the result's nodes, in this process or another).
Nothing imports torch or timm at package import.
"""
