"""Synthetic abdominal phantoms made by our own code: CT (`ct.make_ct_phantom`) and paired T1/T2
MRI with IPMN-like cysts (`mr.make_mr_phantom`), painted from one shared anatomy
(`anatomy`, on the drawing tools of `canvas`).

They train and test the demo models and feed the tests and benchmarks; the Slicer extension
does not ship them (its self-tests use small bundled sample volumes).
"""
