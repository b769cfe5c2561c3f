"""The attested pipeline-parallel training runtime.

This subpackage is not implemented yet; the documentation's roadmap says what it will hold.
"""
