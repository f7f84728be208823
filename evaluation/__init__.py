"""Evaluation of trained models (``evaluate.py``): bits/dim of held-out frames, PSNR/SSIM
against the synthetic set's exact ground truth, lip sync, identity and jitter on real
sequences, and the reports (Markdown table, CSV, bar chart).

Modules: ``metrics`` (per-frame metrics), ``models`` (loading a model, running it on a
query and a source), ``likelihood``, ``synthetic``, ``real``, ``report``.
"""
