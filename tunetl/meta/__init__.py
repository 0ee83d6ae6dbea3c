"""Meta-level analysis over the trials table (pandas and scikit-learn, no torch): the seeds' analyses,
the meta-dataset, the meta-model, its leave-one-task-out evaluation and predictions.

Submodules are imported on use (`from tunetl.meta.analysis import alpha_beta`) so that importing
the package stays cheap; dataset features that need the source model live in `tunetl.features`.
"""
