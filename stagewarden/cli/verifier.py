"""``stagewarden verifier``: run the attestation verifier as a service of its own, and show the
public key an auditor pins."""

from __future__ import annotations

import json
from pathlib import Path

import click

from stagewarden.cli.common import BadInput, format_option, make_console

_VERIFIER_DIR_HELP = (
    "The verifier's key folder (mode 0700, refused if group or others may use it).  "
    "[default: $STAGEWARDEN_VERIFIER_DIR, else $XDG_STATE_HOME/stagewarden/verifier, "
    "else ~/.local/state/stagewarden/verifier]"
)


@click.group()
def verifier() -> None:
    """The attestation verifier: a process of its own that holds the key signing attestation results.

    'stagewarden train' and 'demo' start one for the run (its key in a per-user state folder, see
    --verifier-dir of 'verifier serve'); run 'verifier serve' yourself, ideally as another user or
    on another machine, and pass 'train --verifier SOCKET' for the verifier to be out of the
    coordinator's reach.
    """


def _folder(verifier_dir: str | None) -> Path:
    from stagewarden.attest.verifier_keys import default_verifier_dir

    return Path(verifier_dir) if verifier_dir is not None else default_verifier_dir()


@verifier.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(),
    help="The run configuration (the run.json that 'train --prepare' writes): the verifier computes "
    "every stage's reference measurement from it and from its own copy of the code.",
)
@click.option("--socket", "socket_path", required=True, type=click.Path(), help="The Unix socket to listen on.")
@click.option(
    "--vendor", type=click.Path(), help="The simulated vendor folder whose root it pins (simulated attestation)."
)
@click.option("--verifier-dir", type=click.Path(), help=_VERIFIER_DIR_HELP)
def serve(config_path: str, socket_path: str, vendor: str | None, verifier_dir: str | None) -> None:
    """Serve attestation appraisals on a Unix socket until Ctrl-C or SIGTERM.

    Exit codes: 0 stopped, 2 bad input (a key folder open to others, a bad configuration, a socket
    that is taken).
    """
    from stagewarden.runtime.verifier_process import VerifierSetupError, build_service, run_service

    folder = _folder(verifier_dir)
    try:
        service = build_service(config_path, folder, vendor)
        key = bytes(service.appraiser.verify_key).hex()
        console = make_console(err=True)
        console.print(f"verifier ({service.kind}) listening on {socket_path}", markup=False)
        console.print(f"  public key  {key}  (pin it: stagewarden audit RUN_DIR --verifier-key {key})", markup=False)
        run_service(service, socket_path)
    except VerifierSetupError as exc:
        raise BadInput(str(exc)) from None
    make_console(err=True).print("verifier stopped", markup=False)


@verifier.command(name="public-key")
@click.option("--verifier-dir", type=click.Path(), help=_VERIFIER_DIR_HELP)
@format_option()
def public_key(verifier_dir: str | None, fmt: str) -> None:
    """Print the verifier's public key (creating the key on first use), to pin with 'audit --verifier-key'.

    The key is read from the folder's verifier.pub, which the verifier writes whenever it starts.
    """
    from stagewarden.attest.verifier_keys import (
        VERIFIER_PUBLIC_FILE,
        VerifierKeyError,
        check_private_dir,
        load_verifier_key,
        read_public_key,
    )

    folder = _folder(verifier_dir)
    try:
        if (folder / VERIFIER_PUBLIC_FILE).is_file():  # the private key stays unread
            check_private_dir(folder)
            key = bytes(read_public_key(folder))
        else:
            key = bytes(load_verifier_key(folder).verify_key)
    except VerifierKeyError as exc:
        raise BadInput(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps({"verifier_dir": str(folder), "public_key": key.hex()}))
    else:
        click.echo(key.hex())
