"""Read values out of a Prometheus text exposition (the operator's /metrics), with prometheus-client's
own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 if there are none)."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples(text).items() if sample == name and wanted <= sample_labels)


def families(text: str) -> set[str]:
    """Names of every metric family exposed, including those with no samples yet (HELP/TYPE only)."""
    return {family.name for family in text_string_to_metric_families(text)}
