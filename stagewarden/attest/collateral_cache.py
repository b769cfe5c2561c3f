"""A local folder of DCAP collateral bundles, and fetching them from Intel's PCS or a PCCS.

Each bundle is stored as ``<tee>-<FMSPC>-<ca>.json`` (for example ``tdx-B0C06F000000-platform.json``),
the platform family and PCK CA a quote names, so a verifier finds the collateral for any quote
offline. Fetching uses ``dcap-qvl``'s client, which speaks the PCS/PCCS v4 API under the given base
URL; a fetched bundle is checked for shape and dates and written atomically.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .dcap import MAX_QUOTE_BYTES, Collateral, parse_collateral
from .errors import AttestError, ErrorCode
from .files import atomic_write_text

#: Intel's Provisioning Certification Service (the default source of collateral).
INTEL_PCS_URL = "https://api.trustedservices.intel.com"


def collateral_key(quote: bytes) -> str:
    """The cache name of the collateral that ``quote`` needs: ``<tee>-<FMSPC>-<ca>``."""
    import dcap_qvl

    if len(quote) > MAX_QUOTE_BYTES:
        raise AttestError(ErrorCode.DCAP_QUOTE_MALFORMED, f"quote is larger than {MAX_QUOTE_BYTES} bytes")
    try:
        parsed = dcap_qvl.parse_quote(quote)
        tee = "tdx" if parsed.is_tdx() else "sgx"
        fmspc, ca = str(parsed.fmspc()).upper(), str(parsed.ca())
    except (ValueError, TypeError) as exc:
        raise AttestError(ErrorCode.DCAP_QUOTE_MALFORMED, f"the quote names no platform: {exc}") from None
    if not fmspc.isalnum() or not ca.isalnum():
        raise AttestError(ErrorCode.DCAP_QUOTE_MALFORMED, "the quote's FMSPC or PCK CA is not alphanumeric")
    return f"{tee}-{fmspc}-{ca}"


class CollateralCache:
    """A folder of collateral bundles, one per platform family and PCK CA."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, quote: bytes) -> Path:
        """Where the collateral for ``quote`` is (or would be) stored."""
        return self.root / f"{collateral_key(quote)}.json"

    def collateral_for(self, quote: bytes) -> Collateral:
        """The stored collateral for ``quote``; raise DCAP_COLLATERAL_MISSING when there is none."""
        path = self.path_for(quote)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise AttestError(
                ErrorCode.DCAP_COLLATERAL_MISSING,
                f"no collateral for this platform in {self.root} ({path.name}); fetch it with fetch-collateral",
            ) from None
        return parse_collateral(data)

    def store(self, quote: bytes, collateral: Collateral) -> Path:
        """Write ``collateral`` as the bundle for ``quote``'s platform (atomically); return its path."""
        path = self.path_for(quote)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, collateral.to_json())
        return path


def fetch_collateral(quote: bytes, url: str = INTEL_PCS_URL, timeout_seconds: float = 30.0) -> Collateral:
    """Download the collateral for ``quote`` from Intel's PCS or a PCCS at ``url`` (its base URL).

    Raises:
        AttestError: DCAP_QUOTE_MALFORMED when the quote names no platform, DCAP_FETCH_FAILED when the
            service cannot be reached or answers badly, COLLATERAL_MALFORMED when the bundle is unusable.
    """
    import dcap_qvl

    collateral_key(quote)
    if not url.startswith(("https://", "http://")):
        raise AttestError(ErrorCode.DCAP_FETCH_FAILED, f"the collateral service URL must be http(s), not {url!r}")

    async def download() -> str:
        fetched = await asyncio.wait_for(dcap_qvl.get_collateral(url, quote), timeout_seconds)
        return str(fetched.to_json())

    try:
        text = asyncio.run(download())
    except TimeoutError:
        raise AttestError(ErrorCode.DCAP_FETCH_FAILED, f"{url} did not answer within {timeout_seconds:g} s") from None
    except (ValueError, RuntimeError, OSError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise AttestError(ErrorCode.DCAP_FETCH_FAILED, f"fetching collateral from {url} failed: {detail}") from None
    return parse_collateral(text.encode("utf-8"))
