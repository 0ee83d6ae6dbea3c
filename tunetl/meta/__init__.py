"""Meta-level analysis: transferability scores, dataset features and the seeds' analyses.

Submodules are imported on use (`from tunetl.meta.analysis import alpha_beta`) so that importing
the package stays cheap.
"""
