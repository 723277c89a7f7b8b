"""Low-level helpers every layer may use, and nothing that knows about a stage.

Owns: atomic writes (temp + rename), content hashing, JSON-lines reading, nested-dict access, the artifact
layout (where each stage reads and writes), params.yaml rendering, special-token neutralising and the
OpenMP wait policy. A module here imports only the standard library, third-party packages,
``safealign.errors``, ``safealign.config`` and other modules of this package: data, reward, policy and
every layer above build on it, so an import from here into them would make a cycle.
"""
