"""Reading ``GET /metrics`` in tests: the Prometheus text parsed by prometheus_client, series found by labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def parse(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def series(text: str, name: str, **labels: object) -> list[Sample]:
    """The samples named ``name`` whose labels include ``labels`` (values compared as text)."""
    wanted = {key: str(value) for key, value in labels.items()}
    return [s for s in parse(text) if s.name == name and wanted.items() <= s.labels.items()]


def metric_value(text: str, name: str, **labels: object) -> float | None:
    """The value of the one series named ``name`` with ``labels``, None when there is none."""
    found = series(text, name, **labels)
    assert len(found) <= 1, f"{len(found)} series match {name} {labels}: {found}"
    return found[0].value if found else None
