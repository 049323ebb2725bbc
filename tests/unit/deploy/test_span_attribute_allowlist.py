"""Every ``cth.*`` span attribute the code sets survives the collector's redaction allow list.

The collector drops attribute keys that are not allowed (deploy/otel-collector/config.yaml), so
an attribute added in code but not in the list silently vanishes from Jaeger in production.
"""

from __future__ import annotations

import re

from deploy_files import REPO, yaml_file

ATTRIBUTE = re.compile(r"""["'](cth\.[a-z_]+(?:\.[a-z_]+)*)["']""")


def code_attributes() -> set[str]:
    found: set[str] = set()
    for root in (REPO / "shared" / "src", REPO / "services"):
        for path in root.rglob("*.py"):
            found.update(ATTRIBUTE.findall(path.read_text(encoding="utf-8")))
    return found


def test_the_scan_finds_the_attributes_the_consumer_sets() -> None:
    assert {"cth.event_id", "cth.event_type", "cth.member_id"} <= code_attributes()


def test_every_cth_attribute_set_in_code_is_on_the_collector_allow_list() -> None:
    config = yaml_file("otel-collector/config.yaml")
    allowed = set(config["processors"]["redaction/allowlist"]["allowed_keys"])
    assert code_attributes() - allowed == set()
