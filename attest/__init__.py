"""TEE-style remote attestation (a software model), signed computation receipts and the receipt log.

This subpackage is not implemented yet; the documentation's roadmap says what it will hold.
"""
