"""Shared test configuration.

pytest puts this folder on ``sys.path`` (rootdir-relative imports, no ``__init__.py``), so test
modules import the Hypothesis strategies with ``from strategies import ...``.
"""
