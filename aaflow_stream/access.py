"""Which CURVE keys a command uses to reach a topology's endpoints, and the ``keys`` command.

An endpoint bound off loopback is a CURVE server (``channels/curve.py``). A command given
``--client-key``/``--server-key`` uses those files; one given ``--topology`` on the machine
that holds the topology's data directory uses the local client pair that ``aaflow-stream
keys`` made beside the server's; an endpoint on loopback needs nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import pipeline, spec
from .channels import curve
from .channels.curve import ClientKeys
from .errors import SpecError
from .spec import TopologySpec


def add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--client-key", type=Path, help="this client's secret key file (NAME.key_secret)"
    )
    parser.add_argument("--server-key", type=Path, help="the server's public key (server.key)")


def client_keys(
    args: argparse.Namespace, endpoint: str, topology: TopologySpec | None, bound_at: str | None
) -> ClientKeys | None:
    """The keys to reach ``endpoint`` (``bound_at``: where the topology binds it, which
    decides when the topology is known: a server bound on 0.0.0.0 wants CURVE from a client
    that connects to 127.0.0.1 too)."""
    if args.client_key or args.server_key:
        if not (args.client_key and args.server_key):
            raise SpecError("--client-key and --server-key go together")
        try:
            return ClientKeys.load(args.client_key, args.server_key)
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot read the CURVE keys: {exc}") from exc
    if not curve.needs_curve(bound_at or endpoint):
        return None
    if topology is None:
        raise SpecError(
            f"{endpoint} is off loopback: give --client-key and --server-key "
            "(made by `aaflow-stream keys TOPOLOGY --client NAME`), or --topology"
        )
    return local_keys(topology)


def local_keys(topology: TopologySpec) -> ClientKeys:
    try:
        return curve.local_client_keys(curve.keys_dir(pipeline.data_dir(topology)))
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read the local CURVE keys: {exc}") from exc


def keys_for_serving(topology: TopologySpec) -> ClientKeys | None:
    """The local keys when the query endpoint is a CURVE server (``up --detach``'s check)."""
    return local_keys(topology) if curve.needs_curve(topology.query.endpoint) else None


def add_keys_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser(
        "keys", help="create the CURVE keys of a topology's endpoints off loopback"
    )
    keys.add_argument("topology", type=Path)
    keys.add_argument("--client", metavar="NAME", help="also make a key pair for client NAME")
    keys.add_argument(
        "--out", type=Path, default=Path("."), help="where client NAME's secret key goes"
    )


def keys_command(args: argparse.Namespace) -> None:
    topology = spec.load(args.topology)
    directory = curve.keys_dir(pipeline.data_dir(topology))
    public, created = curve.create_server_keys(directory)
    print(f"server key: {public} ({'created' if created else 'exists'}; give it to clients)")
    if args.client:
        secret = curve.create_client_keys(directory, args.client, args.out.resolve())
        print(f"client {args.client}: {secret} (keep it secret; allowed by the topology)")
