"""What the Slicer application needs to run the PancreasAI modules, shared by PancreasSegMoNet
and IPMNRisk; one concern per file, read in this order:

- dependencies.py: installs torch (through the PyTorch extension), timm and safetensors on the
  first click;
- slicer_process.py: runs a module's work in a PythonSlicer process followed through Qt's event
  loop (`slicerBackgroundRunner`); the tasks and runners themselves are Qt-free, in
  `PancreasAILib.tasks` / `PancreasAILib.runners`;
- model_chooser.py, run_panel.py: the model list and the apply / progress / cancel widgets;
- parameter_gui.py: widgets to parameter node, on every Slicer version;
- self_tests.py: how the modules' self-tests run and skip.

The work itself (volumes, models, files, scenes) is in the Qt-free `PancreasAILib` and the
modules' Libs.
"""
