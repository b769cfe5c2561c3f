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
SGX_SIGNED_PARTS = DATA / "sgx_signed_parts.json"

#: When the sample verifies (just after the collateral's issue dates).
AT = 1750329207
#: The first instant the sample collateral is stale: the PCK CRL's nextUpdate (the earliest of all).
PCK_CRL_NEXT_UPDATE = 1752919235
#: An instant inside the window of the outdated sample's collateral.
OUTDATED_AT = 1771500000
#: An instant at which the sample collateral and the SGX signed parts are both valid.
SWAP_AT = 1750332000
#: The sample's MRTD.
MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
#: The size of the sample's header and TD report body: the region the quote signature covers.
SIGNED_LENGTH = 48 + 584


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


def sgx_signed_parts() -> dict[str, str]:
    """The genuine Intel-signed SGX TCB info and QE identity with their signatures."""
    parts: dict[str, str] = json.loads(SGX_SIGNED_PARTS.read_text())
    return parts
