"""Benchmarks of nnunet-dale, run from the repository root as modules: ``python -m benchmarks.<name>``.

``step_cost`` (cost of a train step), ``noisy_benchmark`` (the built-in benchmark, longer run), ``real_data`` (real
lesion data with a held-out test split), ``ablation`` (the validity study's tables), ``time_to_accuracy`` (from
finished trainings); ``report`` writes their sections of docs/study-log.md; ``trainers/`` holds the study's own trainer
classes, which the studies put on nnUNet_extTrainer. They import only ``nnunet_dale`` and each other (as
``benchmarks.<name>``), never the tests.
"""
