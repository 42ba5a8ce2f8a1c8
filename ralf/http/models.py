"""The shapes of the HTTP answers, for the OpenAPI description (``GET /openapi.json``).

The routes still write their JSON by hand (``ralf.http.codec``, fast and exact for every
column type); these models only document it: a route that returns a ``Response`` is not
validated against its ``response_model``, so declaring one costs a request nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ralf.http.codec import ARROW


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of ralf's own: the error's kind and what was wrong."""

    error: str = Field(examples=["KeyNotFound"], description="the ralf error class, or "
                       "Unauthorized, Forbidden, PayloadTooLarge, ValidationError, NotFound")
    message: str = Field(examples=["no row for key 2 in table 'average'"])


class Health(BaseModel):
    """``GET /health``: the process answers."""

    status: Literal["ok"]


class Problem(BaseModel):
    """One thing that keeps the server from serving fresh features (``Ralf.problems()``)."""

    model_config = ConfigDict(extra="allow")
    table: str | None = Field(description="the table concerned (null: the whole instance)")
    kind: str = Field(description="the table's kind (source, feature), or storage, "
                      "processing, schema for the instance", examples=["source"])
    problem: str = Field(examples=["given up", "failing", "quarantined keys", "behind",
                                   "storage unreachable", "processing stopped",
                                   "migrations pending"])
    reason: str | None = Field(description="the last error met (withheld from requests "
                               "without the token when the server has one)")
    failures: int | None = Field(None, description="failing: consecutive failures")
    keys: int | None = Field(None, description="quarantined keys: how many")
    staleness_max: float | None = Field(None, description="behind: seconds since the "
                                        "oldest pending append")


class Readiness(BaseModel):
    """``GET /ready``: ready (200), or degraded (503) with the problems, worst first."""

    status: Literal["ready", "degraded"]
    problems: list[Problem]


class TableSchema(BaseModel):
    """A table's primary key and its columns' SQL types."""

    primary_key: str | list[str]
    columns: dict[str, str] = Field(examples=[{"user": "BIGINT", "average": "DOUBLE"}])


class TableEntry(BaseModel):
    """One table of ``GET /tables``."""

    model_config = ConfigDict(extra="allow")
    name: str
    kind: str = Field(examples=["source", "feature"])
    lazy: bool
    rows: int
    schema_: TableSchema = Field(alias="schema")


Row = dict[str, Any]  # one row: column name -> value (types restored by ralf.http.codec)


class Removed(BaseModel):
    """``POST /forget``: the rows removed, per table."""

    removed: dict[str, int] = Field(examples=[{"events": 3, "per_user": 1}])


class SnapshotPath(BaseModel):
    """``POST /snapshot``: where the consistent copy was written."""

    path: str


class TableMetrics(BaseModel):
    """One table's counters and staleness in ``GET /status`` (``Ralf.metrics()``)."""

    model_config = ConfigDict(extra="allow")
    kind: str
    ingested: int | None = None
    processed: int | None = None
    stale_keys: int | None = None
    pending_appends: int | None = None
    staleness_max: float | None = None
    quarantined_keys: int | None = None
    last_error: str | None = None


class Status(BaseModel):
    """``GET /status``: the tick count, per-table metrics and the SQL queries running."""

    ticks: int
    tables: dict[str, TableMetrics]
    sql_running: int


_MEANING = {400: "Bad request: a key, query or parameter ralf refuses (the message says why)",
            401: "Missing or wrong bearer token (servers started with a token)",
            403: "Forbidden: the route needs a server started with a token",
            404: "Unknown table, key or snapshot",
            413: "Request body over the limit",
            422: "Malformed request (parameters or body)",
            503: "Degraded: see the problems"}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries of ralf's JSON error answers with these statuses (JSON
    whatever the route's own media type; :func:`ralf.http.docs.new_app` adds the schema)."""
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {status: {"description": _MEANING[status], "content": body} for status in statuses}


ROWS_OR_ARROW: dict[int | str, dict[str, Any]] = {200: {
    "description": "The rows as JSON objects, or as an Arrow IPC stream when the request "
                   f"says `Accept: {ARROW}`",
    "content": {ARROW: {"schema": {"type": "string", "format": "binary"}}}}}


class FeaturesRequest(BaseModel):
    """The body of ``POST /features``: entity rows (``{column: [values]}`` or a list of
    ``{column: value}``) and the features asked, ``"table.column"`` or ``"table:column"``."""

    entities: dict[str, list[Any]] | list[dict[str, Any]]
    features: list[str] = Field(examples=[["average.average", "counts.n"]])
    with_staleness: bool = False


class FeastRequest(BaseModel):
    """The body of ``POST /get-online-features``, as Feast's feature server takes it."""

    features: list[str] = Field(examples=[["average:average"]])
    entities: dict[str, list[Any]]
    full_feature_names: bool = False


class FeastMetadata(BaseModel):
    """The names of the answer's columns: entity columns, then the features."""

    feature_names: list[str]


class FeastResult(BaseModel):
    """One column of Feast's answer, a value, status and timestamp per entity row."""

    values: list[Any]
    statuses: list[Literal["PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"]]
    event_timestamps: list[str]


class FeastResponse(BaseModel):
    """``POST /get-online-features``: Feast's feature-server answer."""

    metadata: FeastMetadata
    results: list[FeastResult]


class MetricsSamples(BaseModel):
    """``GET /status/history``: samples of ``Ralf.metrics()`` taken every ``every``
    seconds, oldest first; each has ``t`` (Unix seconds, wall clock), ``ticks`` and per
    table the sampled counters and gauges."""

    every: float
    samples: list[dict[str, Any]]


class GraphNode(BaseModel):
    """A table of the pipeline graph: its kind and layer (longest path from a source)."""

    name: str
    kind: str
    layer: int


class GraphEdge(BaseModel):
    """An edge of the pipeline graph from a parent or looked-up table (``role``)."""

    model_config = ConfigDict(populate_by_name=True)
    from_: str = Field(alias="from")
    to: str
    role: Literal["parent", "lookup"]


class PipelineGraph(BaseModel):
    """``GET /ui/api/graph``: the pipeline's tables, their edges and aliases."""

    nodes: list[GraphNode]
    edges: list[GraphEdge]
    aliases: dict[str, str]


class RowsPage(BaseModel):
    """``GET /ui/api/rows/{table}``: a page of rows and the table's row count."""

    total: int
    offset: int
    rows: list[Row]


class KeyLists(BaseModel):
    """``GET /ui/api/keys/{table}``: quarantined keys and the stalest keys with their
    staleness."""

    quarantined: list[Any]
    stalest: list[Row]
