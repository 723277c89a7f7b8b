"""Code the tests share: fixtures, builders of small data and tiny models, fake services.

A test module imports from here, never from another test module: a test file is a list of tests, and
importing one runs its module-level set-up and ties two files' fixtures together by accident. Each
module here says what it provides; pytest puts tests/ on ``sys.path`` (rootdir conftest), so
``from helpers.tiny import tiny_overrides`` works from every test file.
"""
