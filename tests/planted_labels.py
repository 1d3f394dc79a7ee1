"""Labels for the planted capitals circuit of the API test data (tests/api_data.py), written the way
`circuitbase.ingest.labels` writes a labelling run's output: its first feature gets a label and top
activating contexts, its second only logit-lens (promoted) tokens, so both ways a feature reads in words
are on the data.
PYTEST_DONT_REWRITE: it holds no asserts.
"""

from __future__ import annotations

import neo4j

from circuitbase.analysis.synthetic import MODEL, TRANSCODERS
from circuitbase.engine.labels import Context, FeatureLabel, FeatureLabels, LabelConfig
from circuitbase.ingest.labels import write_feature_labels
from circuitbase.ingest.model import feature_key
from tests.api_data import SYNTHETIC

CAPITALS = SYNTHETIC.circuits[0]
LABELLED = CAPITALS.features[0]  # (layer, index) with a label
LENS_ONLY = CAPITALS.features[1]  # (layer, index) with promoted tokens only
LABEL = "capital city"
PROMOTED = ("tok2", " Paris", "tok9", "tok3")  # the first three are shown
CONTEXTS = (  # the labelled feature's top activating contexts, strongest first
    Context(tokens=["the", " capital", " of", " France"], at=1, act=2.5, doc=0, pos=2),
    Context(tokens=["a", " capital", " city"], at=1, act=1.25, doc=3, pos=1),
)


def write_planted_labels(driver: neo4j.Driver) -> None:
    """Store the labels above on the Feature nodes of the planted capitals circuit."""
    features = [
        FeatureLabel(
            layer=LABELLED[0],
            index=LABELLED[1],
            density=0.01,
            label=LABEL,
            contexts=list(CONTEXTS),
            promoted=[("tok2", 2.0)],
        ),
        FeatureLabel(
            layer=LENS_ONLY[0],
            index=LENS_ONLY[1],
            density=0.02,
            label="",
            promoted=[(t, 3.0 - i) for i, t in enumerate(PROMOTED)],
        ),
    ]
    labels = FeatureLabels(
        transcoder_set=TRANSCODERS,
        model=MODEL,
        tokens=0,
        documents=0,
        config=LabelConfig(),
        features=features,
    )
    write_feature_labels(driver, labels)


def planted_key(feature: tuple[int, int]) -> str:
    return feature_key(TRANSCODERS, *feature)
