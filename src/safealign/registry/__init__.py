"""The model registry side: what becomes a registered version, and what is done with the champion.

Owns: the promote stage (``promotion``: gates, what is registered, aliases on merit, rollback and repair
entry points), the registry mechanics under it (``versions``: the registry-side lock, pending/complete
versions, repair, the rollback chain) and batch inference with a registered model (``batch``). The MLflow
pyfunc models a version holds are in ``safealign.serving``: their pickles name that module, so it keeps
its path (see its docstring).
"""
