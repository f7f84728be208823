"""What every model's training shares: configs, checkpoints, the loop, run folders, logs.

Kept import-light on purpose: ``training.allocator`` must run before torch is imported.
"""
