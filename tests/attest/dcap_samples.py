"""The real Intel DCAP samples in tests/attest/data/ (see its README), loaded for the tests."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from stagewarden.attest.dcap import Collateral, parse_collateral

DATA = Path(__file__).parent / "data"
QUOTE = DATA / "tdx_quote"
COLLATERAL = DATA / "tdx_quote_collateral.json"
OUTDATED_QUOTE = DATA / "tdx_quote_outdated"
OUTDATED_COLLATERAL = DATA / "tdx_quote_outdated_collateral.json"
SGX_QUOTE = DATA / "sgx_quote"
SGX_COLLATERAL = DATA / "sgx_quote_collateral.json"

#: When the sample verifies (just after the collateral's issue dates).
AT = 1750329207
#: The first instant the sample collateral is stale: the PCK CRL's nextUpdate (the earliest of all).
PCK_CRL_NEXT_UPDATE = 1752919235
#: An instant inside the window of the outdated sample's collateral.
OUTDATED_AT = 1771500000
#: An instant at which the TDX and the SGX sample collateral are both valid.
SWAP_AT = 1750332000
#: The sample's MRTD.
MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
#: The size of the sample's header and TD report body: the region the quote signature covers.
SIGNED_LENGTH = 48 + 584

#: When the SGX sample verifies: its TCB info's issueDate (2025-06-19T10:56:11Z), the latest
#: issue date of its collateral, so inside every window (TCB info, QE identity, both CRLs).
SGX_AT = 1750330571
#: The first instant the SGX collateral is stale: its QE identity's nextUpdate (2025-07-19T10:01:18Z),
#: the earliest of all.
SGX_FIRST_NEXT_UPDATE = 1752919278
#: What the SGX sample verifies as at SGX_AT (upstream dcap-qvl's own test says the same).
SGX_STATUS = "ConfigurationAndSWHardeningNeeded"
SGX_ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")
SGX_FMSPC = "00A067110000"
#: The SGX sample's MRENCLAVE, MRSIGNER and REPORTDATA, as they stand in its enclave report body.
SGX_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
SGX_MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
SGX_REPORT_DATA = b"Hello, world!".ljust(64, b"\x00")
#: The size of the SGX quote's header and enclave report body: the region the quote signature covers.
SGX_SIGNED_LENGTH = 48 + 384


def instant(seconds: int) -> dt.datetime:
    """A UNIX time as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def quote() -> bytes:
    """The sample TDX quote."""
    return QUOTE.read_bytes()


def collateral_fields(path: Path = COLLATERAL) -> dict[str, str]:
    """A collateral bundle as a dict of its fields."""
    fields: dict[str, str] = json.loads(path.read_text())
    return fields


def collateral(fields: dict[str, str] | None = None) -> Collateral:
    """A parsed collateral bundle (the sample's unless ``fields`` are given)."""
    return parse_collateral(json.dumps(fields if fields is not None else collateral_fields()).encode())


def sgx_quote() -> bytes:
    """The sample SGX quote."""
    return SGX_QUOTE.read_bytes()


def sgx_collateral_fields() -> dict[str, str]:
    """The SGX sample's collateral bundle as a dict of its fields."""
    return collateral_fields(SGX_COLLATERAL)


def sgx_collateral() -> Collateral:
    """The SGX sample's parsed collateral bundle."""
    return collateral(sgx_collateral_fields())


def sgx_signed_parts() -> dict[str, str]:
    """The genuine Intel-signed SGX TCB info and QE identity of the SGX sample, with their signatures."""
    fields = sgx_collateral_fields()
    return {name: fields[name] for name in ("tcb_info", "tcb_info_signature", "qe_identity", "qe_identity_signature")}
