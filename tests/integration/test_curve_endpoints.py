"""A topology whose gateway and ingest endpoint listen off loopback, inside a network
namespace (tests/support/netns.py): they are CURVE servers. The local keys of `aaflow-stream
keys` let the same machine's commands in; a remote client made with `keys --client` is served;
a client without keys, or with a key not on the allow-list, is refused and counted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import REPO_DIR
from ..support import netns

ADDRESS = "10.203.7.1"
GATEWAY = f"tcp://{ADDRESS}:7070"
INGEST = f"tcp://{ADDRESS}:7071"

# A client with keys the topology never allowed: its query is never answered.
STRANGER = """
import sys
from aaflow_stream.channels.curve import ClientKeys
from aaflow_stream.client import Client, GatewayUnavailable
keys = ClientKeys.load(sys.argv[2], sys.argv[3])
with Client(sys.argv[1], timeout_s=3.0, curve=keys) as client:
    try:
        client.query("documents", k=1)
    except GatewayUnavailable:
        print("unanswered")
"""

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(bool(netns.unavailable()), reason=netns.unavailable() or ""),
]


def _topology(root: Path) -> Path:
    path = root / "t.yaml"
    path.write_text(
        f"name: curve\ndata_dir: {root}/data\nrun_dir: {root}/run\n"
        f"sources: [{{paths: ['{REPO_DIR}/samples/corpus']}}]\n"
        "stages:\n  - {operator: load}\n  - {operator: transform}\n"
        "  - {operator: embed}\n  - {operator: upsert}\n"
        f"shards: {{count: 2}}\nquery: {{endpoint: '{GATEWAY}'}}\n"
        f"ingest: {{endpoint: '{INGEST}'}}\n"
    )
    return path


def _cli(host: netns.Host, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        host.argv(sys.executable, "-m", "aaflow_stream.cli", *args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO_DIR,
    )


def _curve_refused(run_dir: Path) -> float:
    status = json.loads((run_dir / "status.json").read_text())
    found = [row["metrics"].get("curve_refused", 0) for row in status["stages"]]
    return max(found, default=0)


def test_endpoints_off_loopback_serve_allowed_keys_only(tmp_path: Path) -> None:
    topology = _topology(tmp_path)
    with netns.host(ADDRESS) as host:
        refused = _cli(host, "validate", str(topology))
        assert refused.returncode == 2 and "aaflow-stream keys" in refused.stderr

        made = _cli(host, "keys", str(topology), "--client", "alice", "--out", str(tmp_path))
        assert made.returncode == 0, made.stderr
        server_key = tmp_path / "data" / "keys" / "server.key"
        alice = tmp_path / "alice.key_secret"
        assert server_key.exists() and alice.exists()

        up = _cli(host, "up", str(topology), "--detach", timeout_s=180)
        assert up.returncode == 0, up.stdout + up.stderr
        try:
            doc = tmp_path / "doc.jsonl"
            doc.write_text(json.dumps({"doc_id": "far", "text": "zebra quantum lattice"}) + "\n")
            sent = _cli(host, "ingest", "--topology", str(topology), str(doc))
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert "accepted 1" in sent.stdout

            asked = _cli(
                host, "query", "zebra quantum lattice", "--k", "1", "--json",
                "--endpoint", GATEWAY, "--client-key", str(alice), "--server-key", str(server_key),
            )  # fmt: skip
            assert asked.returncode == 0, asked.stderr
            assert json.loads(asked.stdout)["hits"][0]["doc_id"] == "far"

            keyless = _cli(host, "query", "zebra", "--endpoint", GATEWAY, "--timeout", "3")
            assert keyless.returncode == 2 and "--client-key" in keyless.stderr

            other = tmp_path / "other"
            elsewhere = str(_elsewhere(tmp_path))
            _cli(host, "keys", elsewhere, "--client", "mallory", "--out", str(other))
            stranger = subprocess.run(
                host.argv(
                    sys.executable, "-c", STRANGER, GATEWAY,
                    str(other / "mallory.key_secret"), str(server_key),
                ),
                capture_output=True, text=True, timeout=60, cwd=REPO_DIR,
            )  # fmt: skip
            assert stranger.stdout.strip() == "unanswered", stranger.stderr

            deadline = time.monotonic() + 20
            while _curve_refused(tmp_path / "run") < 1:
                assert time.monotonic() < deadline, "the refusal was not counted"
                time.sleep(0.5)
        finally:
            down = _cli(host, "down", str(topology))
            assert down.returncode == 0, down.stderr


def _elsewhere(root: Path) -> Path:
    """Another topology's data directory: its keys are not on ours' allow-list."""
    other = root / "elsewhere"
    other.mkdir()
    path = other / "t.yaml"
    path.write_text(
        f"name: elsewhere\ndata_dir: {other}/data\nrun_dir: {other}/run\n"
        f"sources: [{{paths: ['{REPO_DIR}/samples/corpus']}}]\n"
        "stages:\n  - {operator: load}\n  - {operator: transform}\n"
        "  - {operator: embed}\n  - {operator: upsert}\n"
    )
    return path
