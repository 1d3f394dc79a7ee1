"""Write feature labels (`engine.labels`) onto the `:Feature` nodes of a transcoder set.

Only Feature nodes that exist are annotated (graphs create them), so labelling never adds nodes; run it
after each load (the loader does when `IngestConfig.labels` names a labels file or transcoder folder).
A label set by a person (through the API, `label_source` not 'auto') is kept; everything else is
replaced. One parameterised UNWIND per batch of features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import neo4j

from circuitbase.engine.labels import FeatureLabels, load_labels
from circuitbase.ingest.model import feature_key

_WRITE = """
UNWIND $rows AS r
MATCH (f:Feature {key: r.key})
SET f.density = r.density, f.top_contexts = r.top_contexts, f.top_activations = r.top_activations,
    f.promoted_tokens = r.promoted_tokens, f.promoted_logits = r.promoted_logits,
    f.suppressed_tokens = r.suppressed_tokens, f.suppressed_logits = r.suppressed_logits,
    f.auto_label = r.label
WITH f, r WHERE f.label IS NULL OR f.label_source = 'auto'
SET f.label = r.label, f.label_source = 'auto'
RETURN count(*) AS relabelled
"""


def feature_rows(labels: FeatureLabels) -> list[dict[str, Any]]:
    """One UNWIND row per feature: key and the properties stored on its node."""
    return [
        {
            "key": feature_key(labels.transcoder_set, f.layer, f.index),
            "label": f.label,
            "density": f.density,
            "top_contexts": [c.render() for c in f.contexts],
            "top_activations": [c.act for c in f.contexts],
            "promoted_tokens": [t for t, _ in f.promoted],
            "promoted_logits": [v for _, v in f.promoted],
            "suppressed_tokens": [t for t, _ in f.suppressed],
            "suppressed_logits": [v for _, v in f.suppressed],
        }
        for f in labels.features
    ]


def write_feature_labels(
    driver: neo4j.Driver,
    labels: FeatureLabels | str | Path,
    *,
    database: str = "neo4j",
    batch: int = 5000,
) -> int:
    """Store `labels` (or the labels file / transcoder folder it names) on the existing Feature nodes, in
    batches of `batch` features (default 5000); returns how many nodes got the automatic label."""
    if not isinstance(labels, FeatureLabels):
        labels = load_labels(labels)
    rows = feature_rows(labels)
    relabelled = 0
    for start in range(0, len(rows), max(1, batch)):
        records, _, _ = driver.execute_query(_WRITE, rows=rows[start : start + batch], database_=database)
        relabelled += int(records[0]["relabelled"])
    return relabelled
