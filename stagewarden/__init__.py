"""stagewarden: prove what a pipeline-parallel training protocol guarantees against malicious
workers, and check that a running system does what the protocol says.
"""

from stagewarden._version import __version__

__all__ = ["__version__"]
