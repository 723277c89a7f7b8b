"""The team set-up: shared services on this machine and the team profile of ``safealign run --team``.

Owns: the stack (PostgreSQL, the S3 server, the MLflow server and their exports: ``stack``, with one
driver per service in ``services``, their processes supervised by ``processes``, and its command line
``stack_cli``), the DVC remote on the same object store (``dvc_remote``) and the profile that checks the
exports, pulls before a run and pushes after it (``profile``). Nothing in the ML stages imports this
package: a team run differs from a laptop run only in where things are stored.
"""
