"""Fixtures of the attestation and receipt tests."""

# --- TEE attestation fixtures (vendor PKI, verifiers, evidence): defined in attest_fixtures.py ---
from attest_fixtures import attest_world  # noqa: F401  (re-exported as a pytest fixture)
