"""Sphinx configuration of the stagewarden documentation.

Build with ``scripts/docs`` (``python -m sphinx -n -W --keep-going -b html docs docs/_build/html``):
nitpicky, every warning an error. The build needs no network: no intersphinx inventories.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stagewarden import __version__

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

# -- Project -----------------------------------------------------------------------------

project = "stagewarden"
author = "The stagewarden developers"
copyright = "the stagewarden developers"
release = __version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_click",
    "specmodel",  # docs/_ext/specmodel.py: key tables generated from the spec models
    "examplereport",  # docs/_ext/examplereport.py: the example security report, built into example-report/
]

root_doc = "index"
exclude_patterns = ["_build", "report-example"]
nitpicky = True
# Standard-library types that cannot resolve without intersphinx inventories (the build must
# not use the network). Our own types must resolve; add third-party types here only when an
# annotation of ours names them.
nitpick_ignore = [
    ("py:class", "fractions.Fraction"),
    ("py:class", "os.PathLike"),
    ("py:class", "collections.abc.Callable"),
    ("py:class", "collections.abc.Hashable"),
    ("py:class", "collections.abc.Collection"),
    ("py:class", "datetime.datetime"),
    ("py:class", "datetime.timedelta"),
    ("py:class", "pathlib.Path"),
    ("py:class", "torch.Tensor"),
    ("py:class", "torch.device"),
    ("py:class", "torch.dtype"),
    ("py:class", "nacl.signing.SigningKey"),
    ("py:class", "nacl.signing.VerifyKey"),
    ("py:class", "collections.abc.Sequence"),
    ("py:class", "collections.abc.Iterator"),
    ("py:class", "collections.abc.Mapping"),
    ("py:class", "collections.abc.Iterable"),
    ("py:class", "torch.nn.modules.module.Module"),
    ("py:class", "torch.nn.modules.container.ModuleDict"),
    ("py:class", "torch.optim.adamw.AdamW"),
    ("py:class", "torch.optim.optimizer.Optimizer"),
    ("py:class", "torch._C.Generator"),
    ("py:class", "cryptography.hazmat.bindings._rust.x509.Certificate"),
    ("py:class", "cryptography.hazmat.bindings._rust.x509.CertificateRevocationList"),
    ("py:class", "cryptography.x509.extensions.ExtensionType"),
    ("py:class", "cryptography.hazmat.primitives.asymmetric.ec.EllipticCurvePrivateKey"),
    ("py:class", "cryptography.hazmat.primitives.asymmetric.ed25519.Ed25519PrivateKey"),
    ("py:class", "subprocess.Popen"),
    ("py:class", "socket.socket"),
    ("py:class", "threading.Event"),
    ("py:class", "pydantic.main.BaseModel"),
    ("py:class", "multiprocessing.process.BaseProcess"),
    # the type variable of a generic signature (protocol.dispatch.receive), not a type of its own
    ("py:class", "stagewarden.runtime.protocol.dispatch._M"),
    # pydantic's strict scalar types, and the run record's constrained field types (aliases of
    # int, str and float in stagewarden.attest.run_record_parts, listed in receipts.rst)
    ("py:class", "StrictStr"),
    ("py:class", "StrictFloat"),
    ("py:class", "StrictBool"),
    ("py:class", "Count"),
    ("py:class", "EndStatus"),
    ("py:class", "WorkerId"),
    ("py:class", "Digest"),
    ("py:class", "Signature"),
    ("py:class", "Measured"),
    ("py:class", "UnitKindName"),
    ("py:class", "ResponseName"),
]

# -- autodoc and napoleon ----------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- HTML --------------------------------------------------------------------------------

# Furo, a theme built for reading: the page reflows to any width, and the security reports
# (stagewarden report) use the same theme, so the docs and a report look alike.
html_theme = "furo"
html_title = f"stagewarden {release}"
html_static_path = ["_static"]
html_css_files = ["stagewarden-docs.css"]

# -- specmodel: spec snippets shown in the text, with the diagnostics the text shows -------
# {path relative to docs/: (file name shown in the text, [diagnostics, in order])}

spec_snippets = {
    "snippets/my-spec.yaml": ("my-spec.yaml", []),
    "snippets/my-spec-typos.yaml": (
        "my-spec.yaml",
        [
            "my-spec.yaml:5:3: unknown key 'replica' in topology (did you mean 'replicas'?)",
            "my-spec.yaml:10:38: adversary.capabilities[1]: the string 'tamper_gradient' is not allowed"
            " (did you mean 'tamper_gradients'?); expected one of: tamper_activations, tamper_gradients,"
            " tamper_weights, poison_data, equivocate, withhold, false_accuse",
        ],
    ),
}
