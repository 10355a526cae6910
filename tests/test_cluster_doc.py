"""docs/production.md, section 9 (Topologies), shows what the tests run: its two NATS
configurations of two regions are, byte for byte, what LocalCluster (which starts the servers of
tests/test_cluster_regions.py and of 'skialith up --cluster') writes for such nodes, and its
commands are the CLI's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from skialith_langgraph.cli import build_parser
from skialith_langgraph.cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "production.md").read_text()
SECTION = DOC[DOC.index("## 9. Topologies") :]
TOKEN = "change-me-to-a-long-random-token"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", SECTION, flags=re.S)


def test_the_two_region_configurations_are_what_the_tests_start() -> None:
    region_a, region_b = blocks("conf")
    a = LocalCluster(
        Path("/var/lib/nats"), nodes=3, port=4222, token=TOKEN, domain="a", leaf_listen=True, name_prefix="a"
    )
    b = LocalCluster(
        Path("/var/lib/nats"),
        nodes=1,
        port=4222,
        token=TOKEN,
        domain="b",
        leaf_remotes=a.leaf_urls,
        leaf_deny=["skialith.>", "$KV.>"],
        name_prefix="b",
    )
    assert region_a + "\n" == a.node_config("a1")
    assert region_b + "\n" == b.node_config("b1")


def test_the_documented_commands_parse() -> None:
    parser = build_parser()
    commands = [
        line for block in blocks("bash") for line in block.splitlines() if line.startswith("skialith ")
    ]
    commands += re.findall(r"`(skialith (?:up|promote)[^`]*)`", SECTION)
    assert "skialith up --cluster 3" in commands and "skialith promote --dry-run" in commands
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])
