"""First load of graphs (files, or rows made in memory) into an empty local instance with
`neo4j-admin database import full`.

1. Refuse unless the target is a local instance circuitbase manages (no CIRCUITBASE_NEO4J_URI) whose
   database holds no nodes; then stop it, so nothing can write to it while the files are made.
2. Stream the graphs once, one in memory at a time: each graph's GraphNodes and their EDGE, IN_GRAPH
   and INSTANCE_OF rows go straight to CSV files; shared nodes (Model, TranscoderSet, Feature, Token,
   Prompt, Graph) are kept once per key with the online writer's rules (Feature/Token: first write
   wins; Prompt: later graphs overwrite keys), and the aggregated ATTRIBUTES edges in a dict keyed by
   (source, target), added up in file order exactly as the online writer does (floats match bit for bit),
   each with the same `pair` key.
3. Write the shared nodes' and ATTRIBUTES files, run the importer over the empty database, start the
   instance, set the empty lists CSV cannot express, apply the schema and record the `:IngestJob`
   (mode 'bulk'). The result has the same content as an online load of the same files.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import neo4j

from circuitbase.dbserver.admin import run_admin_stopped
from circuitbase.dbserver.config import Layout
from circuitbase.dbserver.server import start, stop
from circuitbase.ingest.jobs import JobRecord
from circuitbase.ingest.loader import IngestConfig, IngestSummary, check_rows, read_graph_rows
from circuitbase.ingest.model import NODE_KINDS, GraphRows, IngestError, NodeRow
from circuitbase.ingest.schema import apply_schema
from circuitbase.ingest.writer import pair_key
from circuitbase.settings import URI_ENV, local_instance_settings, open_driver

ARRAY_DELIMITER = "\x1f"  # unit separator: never part of a token or tag
_AGGREGATE_COLUMNS = (
    "pair:long",
    "graphs:long",
    "edges:long",
    "sum:double",
    "sum_abs:double",
    "max_abs:double",
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCALAR_TYPES = {bool: "boolean", int: "long", float: "double", str: "string"}
_JOB_COUNTS = """
MATCH (j:IngestJob {id: $id})
SET j.mode = 'bulk', j.graphs_loaded = $loaded, j.graphs_skipped = $skipped, j.nodes = $nodes,
    j.relationships = $relationships
"""


class BulkImportError(IngestError):
    """The bulk path cannot run here (not a managed local instance, database not empty, importer failed)."""


@dataclass(frozen=True)
class BulkConfig:
    """How a bulk load runs.

    ingest: what graphs are accepted (model, transcoder set, skip_bad; as for the online path).
    work_dir: where the CSV files go (default None: `import/bulk-<job>` in the instance directory).
    keep_files: keep the CSV files after a successful import (default False).
    importer_heap: JVM heap of the importer (default "1g"; its large buffers are off-heap).
    """

    ingest: IngestConfig = field(default_factory=IngestConfig)
    work_dir: Path | None = None
    keep_files: bool = False
    importer_heap: str = "1g"


def _csv_type(value: Any, where: str) -> str:
    if isinstance(value, list):
        items = {_csv_type(item, where) for item in value}
        if len(items) > 1:
            raise BulkImportError(f"{where}: a list mixes {sorted(items)}")
        return f"{items.pop() if items else 'string'}[]"
    kind = _SCALAR_TYPES.get(type(value))
    if kind is None:
        raise BulkImportError(f"{where}: values of type {type(value).__name__} cannot be imported")
    return kind


def _cell(value: Any, where: str) -> Any:
    """A value as the csv module should write it (QUOTE_NONNUMERIC: strings quoted, None empty)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        texts = ["true" if v is True else "false" if v is False else str(v) for v in value]
        if any(ARRAY_DELIMITER in text for text in texts):
            raise BulkImportError(f"{where}: a list value holds the array delimiter U+001F")
        return ARRAY_DELIMITER.join(texts)
    return value


class _CsvFile:
    """One importer input: a header file and a data file; `multiline` if a value holds a line break."""

    def __init__(self, directory: Path, name: str) -> None:
        self.header, self.data = directory / f"{name}.header.csv", directory / f"{name}.csv"
        self.handle = self.data.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        self.rows, self.multiline = 0, False

    def write_header(self, columns: Iterable[str]) -> None:
        self.header.write_text(",".join(columns) + "\n", encoding="utf-8")

    def write(self, rows: list[tuple]) -> None:
        self.writer.writerows(rows)
        self.rows += len(rows)

    def write_text_rows(self, rows: list[tuple]) -> None:
        """Rows that may hold strings with line breaks (the importer must then parse them slowly)."""
        self.multiline = self.multiline or any(
            isinstance(v, str) and ("\n" in v or "\r" in v) for row in rows for v in row
        )
        self.write(rows)

    def close(self) -> None:
        self.handle.close()

    @property
    def argument(self) -> str:
        return f"{self.header},{self.data}"


_NODE_COLUMNS = [f for f in dataclasses.fields(NodeRow) if f.name not in ("kind", "ref")]
_NODE_HINTS = typing.get_type_hints(NodeRow)


def _node_column_type(name: str) -> str:
    hint = _NODE_HINTS[name]
    base = next(t for t in (*typing.get_args(hint), hint) if t in _SCALAR_TYPES)
    return _SCALAR_TYPES[base]


class CsvExport:
    """Importer input files for a stream of graphs (see the module docstring, step 2 and 3)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.models: dict[str, dict[str, Any]] = {}
        self.sets: dict[str, dict[str, Any]] = {}
        self.features: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.prompts: dict[str, dict[str, Any]] = {}
        self.graphs: dict[str, dict[str, Any]] = {}
        self.for_model: dict[tuple[str, str], None] = {}
        self.in_set: dict[tuple[str, str], None] = {}
        self.aggregate: dict[tuple[str, str, str, str], list] = {}  # (s label, t label, s, t) -> sums
        self.empty_lists: list[tuple[str, str, str, str]] = []  # (label, id property, property, id)
        self.next_id = 0
        self.files: list[tuple[str, str, _CsvFile]] = []  # (--nodes|--relationships, label/type, file)
        self.node_files = {kind: self._open("nodes", f"GraphNode:{kind}", kind) for kind in NODE_KINDS}
        columns = [f.name for f in _NODE_COLUMNS]
        self.node_columns = [*columns, "idx", "graph"]
        typed = [f"{name}:{_node_column_type(name)}" for name in columns]
        for file in self.node_files.values():
            file.write_header([":ID(GraphNode)", *typed, "idx:long", "graph:string"])
        self.edges = self._open("relationships", "EDGE", "EDGE")
        self.edges.write_header([":START_ID(GraphNode)", ":END_ID(GraphNode)", "weight:double"])
        self.in_graph = self._open("relationships", "IN_GRAPH", "IN_GRAPH")
        self.in_graph.write_header([":START_ID(GraphNode)", ":END_ID(Graph)"])
        self.instance_of = {}
        for label in ("Feature", "Token"):
            self.instance_of[label] = self._open("relationships", "INSTANCE_OF", f"INSTANCE_OF-{label}")
            self.instance_of[label].write_header([":START_ID(GraphNode)", f":END_ID({label})"])

    def _open(self, option: str, what: str, name: str) -> _CsvFile:
        file = _CsvFile(self.directory, name)
        self.files.append((option, what, file))
        return file

    def add(self, rows: GraphRows) -> bool:
        """Add one graph; False (nothing written) when a graph with its id was added before."""
        if rows.id in self.graphs:
            return False
        base, gid, where = self.next_id, rows.id, f"graph {rows.id}"
        self.next_id += rows.n_nodes
        self.graphs[gid] = {**rows.graph, "complete": True, "aggregated": True}
        self.models.setdefault(rows.model, {"name": rows.model})
        self.sets.setdefault(rows.transcoder_set, {"name": rows.transcoder_set})
        self.for_model[(rows.transcoder_set, rows.model)] = None
        self.prompts.setdefault(str(rows.prompt["id"]), {}).update(rows.prompt)
        for feature in rows.features:
            self.features.setdefault(feature["key"], {**feature, "set": rows.transcoder_set})
            self.in_set[(feature["key"], rows.transcoder_set)] = None
        for token in rows.tokens:
            self.tokens.setdefault(token["key"], {**token, "model": rows.model})
        kinds = {"FeatureNode": "Feature", "ErrorNode": "", "TokenNode": "Token", "LogitNode": "Token"}
        instances: dict[str, list[tuple]] = {"Feature": [], "Token": []}
        for kind, entries in rows.nodes.items():
            table = []
            for entry in entries:
                props, node_id = entry["props"], base + entry["props"]["idx"]
                table.append((node_id, *(_cell(props.get(c), where) for c in self.node_columns[:-1]), gid))
                if entry["ref"]:
                    instances[kinds[kind]].append((node_id, entry["ref"]))
            self.node_files[kind].write_text_rows(table)
            self.in_graph.write([(row[0], gid) for row in table])
        for label, pairs in instances.items():
            self.instance_of[label].write(pairs)
        self.edges.write(
            list(
                zip(
                    [base + s for s in rows.edge_src],
                    [base + t for t in rows.edge_tgt],
                    rows.edge_weight,
                    strict=True,
                )
            )
        )
        self._add_aggregate(rows)
        return True

    def _add_aggregate(self, rows: GraphRows) -> None:
        """The online writer's ATTRIBUTES update, in the same order: +1 graph, +n, +sum, +|sum|, max."""
        for (source, target), cols in rows.aggregate.items():
            for s, t, n, total, total_abs, top in zip(
                cols["s"], cols["t"], cols["n"], cols["sum"], cols["abs"], cols["max"], strict=True
            ):
                acc = self.aggregate.setdefault((source, target, s, t), [0, 0, 0.0, 0.0, 0.0])
                acc[0] += 1
                acc[1] += n
                acc[2] += total
                acc[3] += total_abs
                if top > acc[4]:
                    acc[4] = top

    def _write_node_set(self, label: str, id_prop: str, records: dict[str, dict[str, Any]]) -> None:
        types: dict[str, str] = {}
        for key, record in records.items():
            for name, value in record.items():
                if name == id_prop or value is None:
                    continue
                kind = _csv_type(value, f"{label} {key!r} property {name!r}")
                if types.setdefault(name, kind) != kind:
                    raise BulkImportError(
                        f"{label} property {name!r} is {types[name]} on some nodes and {kind} on others"
                    )
        file = self._open("nodes", label, label)
        columns = sorted(types)
        file.write_header([f"{id_prop}:ID({label})", *(f"{name}:{types[name]}" for name in columns)])
        file.write_text_rows(
            [
                (key, *(_cell(record.get(name), f"{label} {key!r}") for name in columns))
                for key, record in records.items()
            ]
        )
        self.empty_lists.extend(
            (label, id_prop, name, key)
            for key, record in records.items()
            for name in columns
            if record.get(name) == [] and types[name].endswith("[]")
        )

    def _write_relationships(self, kind: str, start: str, end: str, pairs: Iterable[tuple]) -> None:
        file = self._open("relationships", kind, f"{kind}-{start}-{end}")
        file.write_header([f":START_ID({start})", f":END_ID({end})"])
        file.write(list(pairs))

    def finish(self) -> None:
        """Write the shared nodes, their relationships and the ATTRIBUTES files; close everything."""
        for label, id_prop, records in (
            ("Model", "name", self.models),
            ("TranscoderSet", "name", self.sets),
            ("Feature", "key", self.features),
            ("Token", "key", self.tokens),
            ("Prompt", "id", self.prompts),
            ("Graph", "id", self.graphs),
        ):
            self._write_node_set(label, id_prop, records)
        self._write_relationships("FOR_MODEL", "TranscoderSet", "Model", self.for_model)
        self._write_relationships("IN_SET", "Feature", "TranscoderSet", self.in_set)
        self._write_relationships(
            "OF_PROMPT", "Graph", "Prompt", ((g, str(v["prompt"])) for g, v in self.graphs.items())
        )
        by_labels: dict[tuple[str, str], list[tuple]] = {}
        for (source, target, s, t), acc in self.aggregate.items():
            by_labels.setdefault((source, target), []).append((s, t, pair_key(s, t), *acc))
        for (source, target), table in sorted(by_labels.items()):
            file = self._open("relationships", "ATTRIBUTES", f"ATTRIBUTES-{source}-{target}")
            file.write_header([f":START_ID({source})", f":END_ID({target})", *_AGGREGATE_COLUMNS])
            file.write(table)
        for _, _, file in self.files:
            file.close()

    @property
    def node_count(self) -> int:
        return sum(file.rows for option, _, file in self.files if option == "nodes")

    @property
    def relationship_count(self) -> int:
        return sum(file.rows for option, _, file in self.files if option == "relationships")

    def importer_arguments(self, *, database: str) -> list[str]:
        """`database import full` arguments for these files (strict, no bad entry tolerated)."""
        args = ["database", "import", "full", database, "--overwrite-destination=true", "--strict=true"]
        args += ["--bad-tolerance=0", "--array-delimiter=U+001F"]
        args.append(f"--report-file={self.directory / 'import.report'}")
        multiline = [str(path) for _, _, f in self.files if f.multiline for path in (f.header, f.data)]
        if multiline:
            args += ["--multiline-fields-format=v2", f"--multiline-fields={','.join(multiline)}"]
        args += [f"--{option}={what}={file.argument}" for option, what, file in self.files if file.rows]
        return args


def _empty_list_fixes(driver: neo4j.Driver, fixes: list[tuple[str, str, str, str]], database: str) -> None:
    """Set the empty lists the importer reads as missing values (labels and names are checked here)."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for label, id_prop, name, key in fixes:
        grouped.setdefault((label, id_prop, name), []).append(key)
    for (label, id_prop, name), keys in grouped.items():
        if not all(_IDENTIFIER.match(part) for part in (label, id_prop, name)):
            raise BulkImportError(f"cannot set {label}.{name}: not a plain identifier")
        query = f"UNWIND $keys AS k MATCH (n:{label} {{{id_prop}: k}}) SET n.{name} = []"
        driver.execute_query(query, keys=keys, database_=database)


def _node_count(driver: neo4j.Driver, database: str) -> int:
    records, _, _ = driver.execute_query("MATCH (n) RETURN count(n) AS n", database_=database)
    return int(records[0]["n"])


@dataclass(frozen=True)
class BulkResult:
    """What a bulk load did: the job summary plus the seconds spent writing CSV and importing."""

    summary: IngestSummary
    csv_seconds: float
    import_seconds: float
    directory: Path


def _managed_instance(instance: str, layout: Layout) -> None:
    if os.environ.get(URI_ENV):
        raise BulkImportError(
            f"the bulk path loads only a local instance circuitbase manages; unset {URI_ENV} "
            "(or load without --bulk)"
        )
    if layout.load_instance(instance) is None:
        raise BulkImportError(
            f"no local Neo4j instance {instance!r} under {layout.root}; "
            f"create it first with `circuitbase neo4j start --instance {instance}`"
        )


def bulk_import_files(
    paths: Iterable[Path],
    *,
    instance: str = "default",
    layout: Layout | None = None,
    config: BulkConfig | None = None,
    parameters: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda _line: None,
    each: Callable[[], None] = lambda: None,
) -> BulkResult:
    """First load of graph files `paths` into the empty database of local `instance` (`bulk_import_rows`);
    a file that cannot be read or belongs to another model or transcoder set is bad. each: called after
    every file (e.g. a progress bar); the other arguments as for `bulk_import_rows`."""
    ingest = (config or BulkConfig()).ingest

    def graphs() -> Iterator[GraphRows | IngestError]:
        for path in paths:
            try:
                rows = read_graph_rows(path)
                check_rows(rows, ingest, where=str(path))
            except IngestError as exc:
                yield exc
            else:
                yield rows
            each()

    return bulk_import_rows(
        graphs(), instance=instance, layout=layout, config=config, parameters=parameters, log=log
    )


def bulk_import_rows(
    graphs: Iterable[GraphRows | IngestError],
    *,
    instance: str = "default",
    layout: Layout | None = None,
    config: BulkConfig | None = None,
    parameters: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> BulkResult:
    """First load of `graphs` into the empty database of local `instance` (see the module docstring).

    graphs: the rows of each graph, or the IngestError of a graph that could not be made (recorded as bad
    with `config.ingest.skip_bad`, raised otherwise); consumed once, one graph in memory at a time.
    layout: where instances live (default `Layout.resolve()`); parameters: recorded on the job;
    log: progress messages (default: none).
    """
    config, layout = config or BulkConfig(), layout or Layout.resolve()
    _managed_instance(instance, layout)
    stored = layout.load_instance(instance)
    assert stored is not None
    settings = local_instance_settings(name=instance, cache_dir=layout.root)
    database = settings.database
    start(stored, layout=layout, log=log)
    with open_driver(settings) as driver:
        found = _node_count(driver, database)
        job_id = JobRecord(driver, database=database).id  # names the work dir; the node comes later
    if found:
        raise BulkImportError(
            f"database {database!r} of instance {instance!r} holds {found:,} nodes; the bulk path only "
            "makes a first load into an empty database (load without --bulk to add graphs)"
        )
    directory = config.work_dir or layout.instance_dir(instance) / "import" / f"bulk-{job_id}"
    summary = IngestSummary(job_id=job_id)
    began = time.perf_counter()
    log(f"stopping instance {instance!r} for the import")
    stop(instance, layout=layout)
    try:
        export = CsvExport(directory)
        for rows in graphs:
            if isinstance(rows, IngestError):
                if not config.ingest.skip_bad:
                    raise rows
                summary.bad.append(str(rows))
            elif export.add(rows):
                summary.loaded += 1
            else:
                summary.skipped += 1
        export.finish()
        csv_seconds = time.perf_counter() - began
        log(f"importing {export.node_count:,} nodes, {export.relationship_count:,} relationships")
        run_admin_stopped(
            instance,
            export.importer_arguments(database=database),
            layout=layout,
            heap=config.importer_heap,
            what="neo4j-admin database import full",
        )
    finally:
        start(stored, layout=layout, log=log)
    import_seconds = time.perf_counter() - began - csv_seconds
    with open_driver(settings) as driver:
        _empty_list_fixes(driver, export.empty_lists, database)
        apply_schema(driver, database=database)
        files = summary.loaded + summary.skipped + len(summary.bad)
        job = JobRecord(driver, database=database, job_id=job_id)
        job.start({"mode": "bulk", "files": files, **(parameters or {})})
        for message in summary.bad:
            job.error(message)
        summary.nodes, summary.relationships = export.node_count, export.relationship_count
        driver.execute_query(
            _JOB_COUNTS,
            id=job.id,
            loaded=summary.loaded,
            skipped=summary.skipped,
            nodes=summary.nodes,
            relationships=summary.relationships,
            database_=database,
        )
        summary.status = "finished_with_errors" if summary.bad else "finished"
        job.finish(summary.status)
    summary.seconds = time.perf_counter() - began
    if not config.keep_files:
        shutil.rmtree(directory, ignore_errors=True)
    return BulkResult(summary, csv_seconds=csv_seconds, import_seconds=import_seconds, directory=directory)
