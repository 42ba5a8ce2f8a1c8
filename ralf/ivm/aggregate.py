"""Decomposable aggregates maintained by SQL deltas: per key, helper columns (count, sum,
min, max, mean, sum of squared deviations) are merged with the aggregate of the key's
pending appends, and the outputs are computed from the merged helpers.

Everything is generated SQL run inside the database; no Python touches a record.
Variance uses the parallel (Chan et al.) merge of (n, mean, M2), which stays accurate
where a sum of squares would cancel catastrophically.
"""

from __future__ import annotations

from dataclasses import dataclass

from ralf.schema import quote

# function name -> helper kinds it needs
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "count": ("cnt",),
    "sum": ("sum", "cnt"),
    "avg": ("sum", "cnt"),
    "mean": ("sum", "cnt"),
    "min": ("min",),
    "max": ("max",),
    "var_pop": ("cnt", "mean", "m2"),
    "var_samp": ("cnt", "mean", "m2"),
    "var": ("cnt", "mean", "m2"),
    "variance": ("cnt", "mean", "m2"),
    "stddev_pop": ("cnt", "mean", "m2"),
    "stddev_samp": ("cnt", "mean", "m2"),
    "stddev": ("cnt", "mean", "m2"),
    "std": ("cnt", "mean", "m2"),
}
_CANONICAL = {"mean": "avg", "var": "var_samp", "variance": "var_samp", "stddev": "stddev_samp",
              "std": "stddev_samp"}


@dataclass(frozen=True)
class Output:
    """One output column of an aggregate: its name, its function and the function's argument."""

    name: str
    function: str  # canonical: count, sum, avg, min, max, var_pop, var_samp, stddev_*
    argument: str  # SQL expression over the parent's columns, or "*"


def canonical(function: str) -> str:
    """The canonical name of an aggregate function (case-insensitive; aliases such as
    ``mean`` map to ``avg``); raises ValueError for one ralf cannot maintain."""
    name = function.lower()
    if name not in FUNCTIONS:
        raise ValueError(f"unsupported aggregate {function!r} "
                         f"(supported: {', '.join(sorted(FUNCTIONS))})")
    return _CANONICAL.get(name, name)


class DeltaAggregate:
    """Maintains ``SELECT key, agg(arg) AS name, ... FROM parent [WHERE filter] GROUP BY key``
    from the parent's pending appends."""

    def __init__(self, key: str, outputs: list[Output], where: str | None,
                 key_expression: str | None = None, retracting: bool = False) -> None:
        self.key = key
        self.outputs = outputs
        self.where = where
        # the key computed from the parent's columns (a constant, a composite), if it is
        # not one of them
        self.key_expression = key_expression
        # the parent is a changelog: its pending rows are signed (_ralf_diff), and a group
        # whose row count reaches 0 is deleted
        self.retracting = retracting
        arguments = list(dict.fromkeys(o.argument for o in outputs))
        if retracting and "*" not in arguments:
            arguments.append("*")
        self._arg_index = {a: i for i, a in enumerate(arguments)}
        kinds: dict[str, None] = {}
        for o in outputs:
            for kind in FUNCTIONS[o.function]:
                kinds[self.helper(o.argument, kind)] = None
        if retracting:  # the group's rows: when none is left, so is the group
            kinds[self.helper("*", "cnt")] = None
        self.helpers = list(kinds)

    def retracting_copy(self) -> DeltaAggregate:
        """This plan over a changelog parent (see :meth:`retracted_rows`)."""
        return DeltaAggregate(self.key, self.outputs, self.where, self.key_expression, True)

    @property
    def group_rows(self) -> str:
        """The helper counting a group's rows (a retracting plan's)."""
        return self.helper("*", "cnt")

    # ---- naming ---------------------------------------------------------------------------
    def helper(self, argument: str, kind: str) -> str:
        """Name of the helper column of ``kind`` (``cnt``, ``sum``, ``min``, ``max``,
        ``mean``, ``m2``) kept for ``argument``."""
        return f"_ralf_agg{self._arg_index[argument]}_{kind}"

    def query(self, source: str) -> str:
        """The aggregate as a plain query over ``source`` (for types and for recomputation)."""
        selects = [self._key_select()] + [f"{_call(o)} AS {quote(o.name)}"
                                          for o in self.outputs]
        where = f" WHERE {self.where}" if self.where else ""
        return f"SELECT {', '.join(selects)} FROM {source}{where} GROUP BY {quote(self.key)}"

    # ---- SQL ------------------------------------------------------------------------------
    def delta_select(self, pending: str) -> str:
        """Per key of the pending appends: the helpers of their aggregate."""
        cols = [self._key_select()]
        for name in self.helpers:
            argument, kind = self._parse(name)
            cols.append(f"{_delta(kind, argument)} AS {quote(name)}")
        where = f" WHERE {self.where}" if self.where else ""
        return (f"SELECT {', '.join(cols)} FROM ({pending}) AS __ralf_pending{where} "
                f"GROUP BY {quote(self.key)}")

    def _key_select(self) -> str:
        return f"{self.key_expression or quote(self.key)} AS {quote(self.key)}"

    def derived(self, types: dict[str, str]) -> dict[str, str]:
        """Each output as an SQL expression over the helper columns: a table may compute
        its outputs (DuckDB: VIRTUAL columns) rather than store them. ``types``: the
        outputs' SQL types."""
        return self._outputs({n: quote(n) for n in self.helpers}, types)

    def _outputs(self, helpers: dict[str, str], types: dict[str, str]) -> dict[str, str]:
        return {o.name: f"CAST({self._final(o, helpers)} AS {types[o.name]})"
                for o in self.outputs}

    def new_rows(self, target: str, pending: str, types: dict[str, str]) -> str:
        """The changed rows, whole: the delta joined to the current rows, helpers merged and
        outputs derived from them (key, outputs, helpers). A read-only query."""
        return self._merged(target, self.delta_select(pending), types, "")

    def new_versions(self, target: str, pending: str, types: dict[str, str],
                     event_time: str, order: str) -> str:
        """Like :meth:`new_rows`, a row per key *and event time* of the pending appends
        (column ``event_time``): the key's value once every pending append up to that
        event time is merged, for a history valid by event time. Each row's event time
        is never earlier than the current row's; ``order`` ranks a key's rows (the
        latest is the key's new row)."""
        key = self.key_expression or quote(self.key)
        window = (f"PARTITION BY {key} ORDER BY {event_time} RANGE BETWEEN UNBOUNDED "
                  "PRECEDING AND CURRENT ROW")
        cols = [self._key_select(), event_time]
        for name in self.helpers:
            argument, kind = self._parse(name)
            cols.append(f"{_delta(kind, argument, window)} AS {quote(name)}")
        where = f" WHERE {self.where}" if self.where else ""
        # the appends of one event time are peers of one RANGE frame: equal running values
        running = (f"SELECT {', '.join(cols)}, row_number() OVER (PARTITION BY {key}, "
                   f"{event_time}) AS __ralf_peer FROM ({pending}) AS __ralf_pending{where}")
        delta = f"SELECT * FROM ({running}) AS r WHERE __ralf_peer = 1"
        timed = (f", greatest(d.{event_time}, o.{event_time}) AS {event_time}, "
                 f"d.{event_time} AS {order}")
        return self._merged(target, delta, types, timed)

    def retracted_rows(self, target: str, pending: str, current: str,
                       types: dict[str, str]) -> str:
        """The changed rows of a retracting plan, whole (key, outputs, helpers): the
        pending +1 rows merged into the key's helpers, then the -1 rows taken out by the
        inverse of the same merge — count, sum, avg and the variance family exactly by
        deltas (Chan et al.'s merge solved for one part), min and max recomputed from the
        ``current`` rows of the groups that lost a row. A row whose group count is 0 is a
        group that is gone. A read-only query."""
        key = quote(self.key)
        signed = f"SELECT * FROM ({pending}) AS __ralf_signed WHERE _ralf_diff"
        added, removed = self.delta_select(f"{signed} > 0"), self.delta_select(f"{signed} < 0")
        grouped = self.key_expression or key
        extremes = [n for n in self.helpers if self._parse(n)[1] in ("min", "max")]

        def side(alias: str) -> dict[str, str]:
            return {n: (f"coalesce({alias}.{quote(n)}, 0)" if n.endswith("_cnt")
                        else f"{alias}.{quote(n)}") for n in self.helpers}

        merged = {n: self._merge(n, side("o"), side("i")) for n in self.helpers}
        columns = [f"k.{key} AS {key}"]
        columns += [f"{v} AS {quote('m' + n)}" for n, v in merged.items()]
        columns += [f"{v} AS {quote('g' + n)}" for n, v in side("g").items()]
        joins = (f"LEFT JOIN {target} AS o ON o.{key} = k.{key} "
                 f"LEFT JOIN ({added}) AS i ON i.{key} = k.{key} "
                 f"LEFT JOIN ({removed}) AS g ON g.{key} = k.{key}")
        if extremes:
            lost = (f"SELECT * FROM {current} AS __ralf_current WHERE {grouped} IN "
                    f"(SELECT {key} FROM ({removed}) AS __ralf_lost)")
            joins += f" LEFT JOIN ({self.delta_select(lost)}) AS r ON r.{key} = k.{key}"
            columns += [f"r.{quote(n)} AS {quote('r' + n)}" for n in extremes]
        keys = f"SELECT {key} FROM ({added}) AS a UNION SELECT {key} FROM ({removed}) AS b"
        both = f"SELECT {', '.join(columns)} FROM ({keys}) AS k {joins}"
        final = {n: self._unmerge(n) for n in self.helpers}
        helpers = ", ".join(f"{v} AS {quote(n)}" for n, v in final.items())
        left = f"SELECT {key}, {helpers} FROM ({both}) AS b"
        outputs = self._outputs({n: quote(n) for n in self.helpers}, types)
        selects = [key, *(f"{v} AS {quote(c)}" for c, v in outputs.items()),
                   *(quote(n) for n in self.helpers)]
        return f"SELECT {', '.join(selects)} FROM ({left}) AS f"

    def _unmerge(self, name: str) -> str:
        """A helper once a group's removed rows (columns ``g<helper>``) are taken out of
        the merged group (``m<helper>``); min and max come recomputed (``r<helper>``)
        when a row was removed."""
        argument, kind = self._parse(name)

        def m(k: str) -> str:
            return quote("m" + self.helper(argument, k))

        def g(k: str) -> str:
            return quote("g" + self.helper(argument, k))

        left = f"({m('cnt')} - {g('cnt')})" if kind != "min" and kind != "max" else ""
        if kind == "cnt":
            return left
        if kind in ("min", "max"):
            lost = quote("g" + self.group_rows)
            return f"(CASE WHEN {lost} > 0 THEN {quote('r' + name)} ELSE {m(kind)} END)"
        if kind == "sum":
            return (f"(CASE WHEN {left} = 0 THEN NULL WHEN {g('cnt')} = 0 THEN {m('sum')} "
                    f"ELSE {m('sum')} - {g('sum')} END)")
        mean = (f"(CASE WHEN {left} = 0 THEN NULL WHEN {g('cnt')} = 0 THEN {m('mean')} ELSE "
                f"({m('cnt')} * {m('mean')} - {g('cnt')} * {g('mean')}) / {left} END)")
        if kind == "mean":
            return mean
        # m2: the merge M2 = M2_left + M2_gone + (mean_gone - mean_left)^2 n_left n_gone / n
        # solved for M2_left (never below 0: rounding)
        return (f"(CASE WHEN {left} = 0 THEN 0 WHEN {g('cnt')} = 0 THEN {m('m2')} ELSE "
                f"greatest({m('m2')} - {g('m2')} - ({g('mean')} - {mean}) * ({g('mean')} - "
                f"{mean}) * {left} * {g('cnt')} / {m('cnt')}, 0) END)")

    def helper_deltas(self) -> list[str]:
        """Each helper over a group of appended rows, as ``<aggregate> AS <helper>``."""
        return [f"{_delta(kind, argument)} AS {quote(name)}"
                for name in self.helpers for argument, kind in [self._parse(name)]]

    def merged_helpers(self, old: str, new: str) -> dict[str, str]:
        """Each helper of two groups merged (the relations aliased ``old``, which may be
        missing — a LEFT JOIN —, and ``new``): helper -> SQL expression."""
        fresh = {n: f"{new}.{quote(n)}" for n in self.helpers}
        before = {n: (f"coalesce({old}.{quote(n)}, 0)" if n.endswith("_cnt")
                      else f"{old}.{quote(n)}") for n in self.helpers}
        return {n: self._merge(n, before, fresh) for n in self.helpers}

    def helper_kind(self, helper: str) -> tuple[str, str]:
        """A helper's (argument, kind)."""
        return self._parse(helper)

    def outputs_of(self, helpers: dict[str, str], types: dict[str, str]) -> dict[str, str]:
        """Each output as an SQL expression over the given helper expressions, cast to its
        SQL type (``types``)."""
        return self._outputs(helpers, types)

    def _merged(self, target: str, delta: str, types: dict[str, str], extra: str) -> str:
        key = quote(self.key)
        merged = self.merged_helpers("o", "d")
        columns = [self.key, *(o.name for o in self.outputs), *self.helpers]
        values = [f"d.{key}", *self._outputs(merged, types).values()]
        values += [merged[n] for n in self.helpers]
        selects = ", ".join(f"{v} AS {quote(c)}" for v, c in zip(values, columns, strict=True))
        return (f"SELECT {selects}{extra} FROM ({delta}) AS d "
                f"LEFT JOIN {target} AS o ON o.{key} = d.{key}")

    def _parse(self, helper: str) -> tuple[str, str]:
        prefix, kind = helper[len("_ralf_agg"):].split("_", 1)
        argument = next(a for a, i in self._arg_index.items() if i == int(prefix))
        return argument, kind

    def _merge(self, name: str, old: dict[str, str], new: dict[str, str]) -> str:
        argument, kind = self._parse(name)
        o, e = old[name], new[name]
        if kind == "cnt":
            return f"({o} + {e})"
        if kind == "sum":
            return f"coalesce({o} + {e}, {o}, {e})"
        if kind == "min":
            return f"least({o}, {e})"
        if kind == "max":
            return f"greatest({o}, {e})"
        n_old = old[self.helper(argument, "cnt")]
        n_new = new[self.helper(argument, "cnt")]
        total = f"({n_old} + {n_new})"
        if kind == "mean":
            combined = f"({n_old} * {o} + {n_new} * {e}) / {total}"
        else:  # m2: Chan et al. parallel merge
            mean_old = old[self.helper(argument, "mean")]
            mean_new = new[self.helper(argument, "mean")]
            combined = (f"{o} + {e} + ({mean_new} - {mean_old}) * ({mean_new} - {mean_old}) "
                        f"* {n_old} * {n_new} / {total}")
        return (f"(CASE WHEN {n_old} = 0 THEN {e} WHEN {n_new} = 0 THEN {o} "
                f"ELSE {combined} END)")

    def _final(self, output: Output, h: dict[str, str]) -> str:
        def of(kind: str) -> str:
            return h[self.helper(output.argument, kind)]

        f = output.function
        if f == "count":
            return of("cnt")
        if f == "sum":
            return of("sum")
        if f == "avg":
            return f"(CAST({of('sum')} AS DOUBLE) / nullif({of('cnt')}, 0))"
        if f in ("min", "max"):
            return of(f)
        # NULL unless there are enough values: m2 / (cnt - 1) of an all-NULL group would
        # be 0 / -1 = -0.0 where SQL's var_samp gives NULL
        least = 0 if f.endswith("_pop") else 1
        divisor = of("cnt") if least == 0 else f"({of('cnt')} - 1)"
        # over an infinite or NaN value (its mean is not finite: x - x is NaN) SQL's
        # variance of two or more values is NaN, whatever the merged m2 says (inf)
        variance = (f"(CASE WHEN {of('cnt')} <= {least} THEN NULL "
                    f"WHEN {of('cnt')} > 1 AND NOT ({of('mean')} - {of('mean')} = 0) "
                    f"THEN CAST('NaN' AS DOUBLE) ELSE {of('m2')} / {divisor} END)")
        return f"sqrt({variance})" if f.startswith("stddev") else variance


def _call(output: Output) -> str:
    return f"{output.function}({output.argument})"


def _delta(kind: str, argument: str, window: str | None = None) -> str:
    """A helper of ``kind`` over a group of rows, or over a running ``window``."""
    over = "" if window is None else f" OVER ({window})"
    if kind == "cnt":
        return f"count({argument}){over}"
    if kind == "mean":
        return f"avg({argument}){over}"
    if kind == "m2":
        return f"coalesce(var_pop({argument}){over} * count({argument}){over}, 0)"
    return f"{kind}({argument}){over}"
