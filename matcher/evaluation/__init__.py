"""Evaluation of the pipeline stages against ground truth (bench data sets)."""
