"""Scoring detections against point annotations: the matcher (`matching`, over the
compiled core), P / R / F1 / ED per image and pooled (`metrics`), threshold sweeps
(`sweep`), data sets and splits (`datasets`; point files are the core's
`micronet.runtime.points`), detection CSVs against annotations (`predictions`),
model files over a data set (`evaluate`), and phenotype classification (`class_metrics`).

Sits above the inference core; it reaches a training checkpoint only through a callable
the caller passes (the trainer registers it), never by importing the trainer.
"""
