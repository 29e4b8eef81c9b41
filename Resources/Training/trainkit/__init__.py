"""What every training script here needs, whatever it trains (MoNet, its baselines, the IPMN ViT).

- protocol.py: a protocol as a dataclass of defaults, turned into command-line options and
  recorded in the model card (every default written once);
- run_files.py: where a run's log, curves, checkpoints and data manifest go;
- seeding.py: fixed seeds and random-number-generator states that survive a resume;
- distributed.py: one process, one GPU or several (torchrun / DDP; gloo on CPU, nccl on GPU);
- runlog.py: a readable log file, progress bars, CSV curves (TensorBoard when installed);
- checkpoint.py: resumable checkpoints as .safetensors + JSON, never pickle;
- hashing.py: SHA256 of data files, remembered between runs;
- model_card.py: the software and command line a card records.

Nothing here knows about pancreases: data and models come from the script that uses it.
"""
