"""The result of a regression comparison (:class:`DiffResult`) and its
renderings: terminal text, Markdown for a pull-request comment, one
self-contained HTML file with embedded plots, and JSON.

Plots use matplotlib's object API with the Agg canvas (no pyplot), so
rendering never changes the backend of a notebook that calls it.
"""

import base64
import html
import io
import json
import math

import numpy as np
import pandas as pd

from .. import units
from .render import Document, duration_text, markdown_table
from .schema import clock_resolution_ns

FORMATS = ("text", "markdown", "html", "json")

#: Rows plotted in HTML when nothing regressed or improved.
_TOP_UNFLAGGED = 3


# --------------------------------------------------------------------------
# cell formatting

def _missing(v):
    return v is None or v is pd.NA or (isinstance(v, float)
                                       and math.isnan(v))


def fmt_rel(v):
    """A relative change as a signed percentage.

    Examples
    --------
    >>> fmt_rel(0.123), fmt_rel(-0.5), fmt_rel(25.0), fmt_rel(float("nan"))
    ('+12.3%', '-50.0%', '+2500%', '-')
    """
    if _missing(v):
        return "-"
    if math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    pct = 100 * v
    return f"{pct:+.0f}%" if abs(pct) >= 100 else f"{pct:+.1f}%"


def _ns(v, signed=False, res=1):
    """A duration cell, with no more precision than the timestamps have
    (*res*: ``clock.resolution_ns``)."""
    if _missing(v):
        return "-"
    s = duration_text(abs(v) if signed else v, res)
    return ("-" if v < 0 else "+") + s if signed else s


def _p(v):
    if _missing(v):
        return "-"
    return "<1e-300" if v < 1e-300 else (f"{v:.2g}" if v < 0.01
                                         else f"{v:.3f}")


def _ci(row):
    if _missing(row["ci_low"]):
        return "-"
    return f"[{fmt_rel(row['ci_low'])}, {fmt_rel(row['ci_high'])}]"


def _spread(row, side, res=1):
    lo, hi = row[f"{side}_run_min_ns"], row[f"{side}_run_max_ns"]
    if _missing(lo):
        return "-"
    return _ns(lo, res=res) if lo == hi else f"{_ns(lo, res=res)}..{_ns(hi, res=res)}"


def _site(row):
    return "(all)" if row["level"] == "lock" else row["callsite"]


def _summary_cells(df, stat, res=1):
    """Header and cells of the summary table shared by text, Markdown and
    HTML."""
    heads = ["lock", "callsite", "status", "n base", "n new",
             f"{stat} base", f"{stat} new", "change", "CI", "p (Holm)",
             "Cliff d", "HL shift", "runs base", "runs new"]
    rows = [[r["lock"], _site(r), r["status"], str(r["base_count"]),
             str(r["new_count"]), _ns(r["base_stat_ns"], res=res),
             _ns(r["new_stat_ns"], res=res), fmt_rel(r["rel_change"]), _ci(r),
             _p(r["p_adj"]),
             "-" if _missing(r["cliffs_delta"])
             else f"{r['cliffs_delta']:+.2f}",
             _ns(r["hl_shift_ns"], signed=True, res=res), _spread(r, "base", res),
             _spread(r, "new", res)]
            for r in df.to_dict("records")]
    return heads, rows


_RIGHT = {3, 4, 5, 6, 7, 9, 10, 11}
# Left out first to fit a terminal: runs, HL shift, Cliff d, counts, the
# statistic on both sides (the verdict line repeats it), p.
_DROP = ((12, 13), 11, 10, (3, 4), (5, 6), 9)
#: Colour of each status on a terminal.
STATUS_STYLES = {"regressed": "bold red", "improved": "green",
                 "insufficient": "dim", "new": "dim", "gone": "dim"}


def _detail_cells(df, res=1):
    heads = ["lock", "callsite", "side", "runs", "n", "p50", "p90", "p99",
             "max", "mean", "total/run"]
    rows = []
    for r in df.to_dict("records"):
        for side in ("base", "new"):
            rows.append([r["lock"], _site(r), side, str(r[f"{side}_runs"]),
                         str(r[f"{side}_count"])] +
                        [_ns(r[f"{side}_{c}_ns"], res=res) for c in
                         ("p50", "p90", "p99", "max", "mean", "total")])
    return heads, rows


def _html_table(heads, rows, right, status_col=None):
    out = ["<table><thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in heads]
    out.append("</tr></thead><tbody>")
    for r in rows:
        cls = f' class="{r[status_col]}"' if status_col is not None else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td{" class=num" if i in right else ""}>{html.escape(c)}</td>'
            for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


# --------------------------------------------------------------------------
# plots

def _ecdf(values):
    u, c = np.unique(values, return_counts=True)
    # Start at 0 so that the first step is drawn; log axes need x >= 1.
    x = np.maximum(np.r_[u[0], u], 1)
    return x, np.r_[0.0, np.cumsum(c) / len(values)]


def plot_row(result, lock, callsite):
    """Distribution plot of one compared row: CDFs of each run and of the
    pooled sides (log time axis), and the statistic of each run.

    Parameters
    ----------
    result : DiffResult
    lock, callsite : str
        ``callsite="*"`` is the row pooling every call site of the lock.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = result.plot("bql", "pio:debugport")        # doctest: +SKIP
    >>> fig.savefig("debugport.png")                     # doctest: +SKIP
    """
    from matplotlib.figure import Figure
    key = (lock, callsite)
    if key not in result.samples:
        raise KeyError(f"no compared row for lock {lock!r} call site "
                       f"{callsite!r}")
    base, new = result.samples[key]
    o = result.options
    row = result.table[(result.table["lock"] == lock)
                       & (result.table["callsite"] == callsite)].iloc[0]
    fig = Figure(figsize=(9.5, 3.4), dpi=90)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.3, 1]})
    colors = {"base": "#1f6fb4", "new": "#d9480f"}
    for side, runs in (("base", base), ("new", new)):
        if len(runs) > 1:
            for r in runs:                  # a loop over runs
                x, y = _ecdf(r)
                ax.step(x, y, where="post", color=colors[side], alpha=0.25,
                        lw=0.8)
        if runs:
            x, y = _ecdf(np.concatenate(runs))
            label = "baseline" if side == "base" else "candidate"
            ax.step(x, y, where="post", color=colors[side], lw=1.8,
                    label=f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})")
    ax.set_xscale("log")
    ax.set_xlabel(f"{o['metric']} time (ns, log)")
    ax.set_ylabel("fraction of acquisitions")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    every = []
    for i, (side, runs) in enumerate((("base", base), ("new", new))):
        stats = [_run_stat(r, o["stat"]) for r in runs]
        every += stats
        bx.scatter(np.full(len(stats), i), stats, color=colors[side],
                   zorder=3)
    if every and min(every) > 0 and max(every) / min(every) > 20:
        bx.set_yscale("log")
    if not _missing(row["base_stat_ns"]):
        bx.axhline(row["base_stat_ns"] * (1 + o["threshold"]), color="grey",
                   ls="--", lw=1, label=f"baseline +{o['threshold']:.0%}")
        bx.legend(fontsize=8)
    bx.set_xticks([0, 1], ["baseline", "candidate"])
    bx.set_xlim(-0.6, 1.6)
    bx.set_ylabel(f"{o['stat']} per run (ns"
                  + (", log)" if bx.get_yscale() == "log" else ")"))
    bx.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{lock} {_site(row)}: {o['metric']} {o['stat']} "
                 f"{_ns(row['base_stat_ns'], res=result.resolution_ns)} -> "
                 f"{_ns(row['new_stat_ns'], res=result.resolution_ns)} "
                 f"({fmt_rel(row['rel_change'])}, {row['status']})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _run_stat(values, stat):
    v = np.sort(values)
    if stat == "mean":
        return float(v.mean())
    if stat == "total":
        return float(v.sum())
    p = int(stat[1:])
    return float(v[max((p * len(v) + 99) // 100, 1) - 1])


def _png_base64(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------
# the result

class DiffResult:
    """Outcome of :func:`kvmscope.analysis.diff`: a table and its renderers.

    Attributes
    ----------
    table : DataFrame
        One row per lock (``callsite == "*"``, ``level == "lock"``) and per
        (lock, call site): counts, p50/p90/p99/max/mean/total per side,
        the judged statistic, ``rel_change`` with its interval
        ``ci_low``/``ci_high``, absolute ``delta_ns`` with
        ``delta_ci_low_ns``/``delta_ci_high_ns``, ``p_value``/``p_adj``
        (Mann-Whitney, Holm), ``cliffs_delta``, ``hl_shift_ns``, the range
        of the per-run statistic per side, ``status`` and ``reason``.
    options : dict
        The options used (threshold as a fraction, min_delta_ns in ns).
    base, new : list of Trace
    samples : dict
        ``(lock, callsite) -> (base runs, new runs)``: the samples compared,
        one array per run.
    notes : list of str
        Caveats (one run per side, differing configs, trace warnings).

    Examples
    --------
    >>> r = diff("runs/base", "runs/new")                  # doctest: +SKIP
    >>> r.regressions[["lock", "callsite", "rel_change"]]  # doctest: +SKIP
    >>> print(r.to_markdown())                             # doctest: +SKIP
    """

    def __init__(self, table, options, base, new, samples, notes, structure=None, caused=None):
        self.table = table
        self.options = options
        self.base = base
        self.new = new
        self.samples = samples
        self.notes = notes
        self.structure = structure if structure is not None else pd.DataFrame()
        #: The coarsest timestamp step of the runs compared (1 ns for a
        #: recording, 1 us for an imported QEMU log): cells show no finer digits.
        self.resolution_ns = max([clock_resolution_ns(t.meta) for t in list(base) + list(new)] or [1])
        self.caused = caused if caused is not None else pd.DataFrame()

    # -- structure and waiting caused (informational: no effect on the verdict)

    def structure_changes(self):
        """Rows of :attr:`structure` whose status is not ``same``."""
        st = self.structure
        return st[st["status"] != "same"] if len(st) else st

    def _structure_lines(self):
        """Text lines: what appeared, vanished or changed frequency."""
        st = self.structure
        if not len(st):
            return ["  (nothing to compare)"]
        changed = self.structure_changes()
        if not len(changed):
            kinds = st.groupby("kind").size()
            return ["  no structural change: the same " + ", ".join(
                f"{n} {k}{'s' * (n != 1)}" for k, n in kinds.items())
                + " at the same frequencies (within run-to-run variation)"]
        unit = st["unit"].iloc[0]
        lines = []
        for r in changed.to_dict("records"):
            if r["status"] == "appeared":
                what = f"appeared: {r['new_rate']:.3g} {unit} ({r['new_per_run']:.4g} per run)"
            elif r["status"] == "vanished":
                what = f"vanished: was {r['base_rate']:.3g} {unit} ({r['base_per_run']:.4g} per run)"
            else:
                what = (f"{r['status']}: {r['base_rate']:.3g} -> {r['new_rate']:.3g} {unit} "
                        f"({fmt_rel(r['rel_change'])}, {r['z']:.1f} standard errors)")
            lines.append(f"  {r['kind']} {r['name']}: {what}")
        return lines

    def _caused_cells(self):
        c = self.caused
        heads = ["lock", "critical section", "status", "base caused", "new caused",
                 "base share", "new share", "shift"]
        res = self.resolution_ns
        rows = [[r["lock"], r["holder_callsite"], r["status"], _ns(r["base_caused_ns"], res=res),
                 _ns(r["new_caused_ns"], res=res), f"{r['base_pct']:.1f}%", f"{r['new_pct']:.1f}%",
                 f"{r['shift_pct']:+.1f} pts"] for r in c.to_dict("records")] if len(c) else []
        return heads, rows

    @property
    def regressions(self):
        """Rows whose status is ``regressed``."""
        return self.table[self.table["status"] == "regressed"]

    @property
    def regressed(self):
        """True when any lock or call site regressed."""
        return bool((self.table["status"] == "regressed").any())

    @property
    def exit_status(self):
        """``kvmscope diff`` exit status: 1 on regression, else 0."""
        return 1 if self.regressed else 0

    def __repr__(self):
        counts = self.table["status"].value_counts()
        parts = ", ".join(f"{n} {s}" for s, n in counts.items())
        return (f"<DiffResult {self.options['metric']} "
                f"{self.options['stat']}: {parts or 'no rows'}>")

    def _repr_html_(self):
        return self.to_html(full_page=False)

    # -- plain facts used by every renderer --------------------------------

    def _rule(self):
        o = self.options
        m = int(self.table["p_adj"].notna().sum())
        return (f"regressed = Mann-Whitney p (Holm over {m} rows) < "
                f"{o['alpha']:g}, and the {1 - o['alpha']:.0%} interval of "
                f"the change of {o['stat']} above "
                f"+{o['threshold']:.0%}, and at least "
                f"{units.format_duration(o['min_delta_ns'], sep='')} slower")

    def _sides(self):
        def side(runs):
            paths = [t.path or "(in memory)" for t in runs]
            shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
            return f"{len(runs)} run{'s' * (len(runs) != 1)} ({shown})"
        return f"baseline {side(self.base)}; candidate {side(self.new)}"

    def verdict(self):
        """One line: the regressed rows, or why nothing was flagged.

        Examples
        --------
        >>> result.verdict()                                # doctest: +SKIP
        'REGRESSION: bql pio:debugport hold p50 40ns -> 1.04us (+2500%)'
        """
        o = self.options
        reg = self.regressions
        # Call sites first: they say where; the lock rows pool them.
        reg = reg.iloc[np.argsort((reg["level"] == "lock").to_numpy(),
                                  kind="stable")]
        if len(reg):
            res = self.resolution_ns
            items = [f"{r['lock']} {_site(r)} {o['metric']} {o['stat']} "
                     f"{_ns(r['base_stat_ns'], res=res)} -> {_ns(r['new_stat_ns'], res=res)} "
                     f"({fmt_rel(r['rel_change'])})"
                     for r in reg.to_dict("records")]
            return "REGRESSION: " + "; ".join(items)
        counts = self.table["status"].value_counts()
        detail = ", ".join(f"{n} {s}" for s, n in counts.items())
        return f"no regression ({detail or 'nothing to compare'})"

    # -- renderers ----------------------------------------------------------

    def render(self, fmt="text", width=None, color=False):
        """Render as ``"text"``, ``"markdown"``, ``"html"`` or ``"json"``;
        *width* and *color* are for text on a terminal (see
        :meth:`to_text`).

        Examples
        --------
        >>> print(result.render("markdown"))                # doctest: +SKIP
        """
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; one of "
                             f"{', '.join(FORMATS)}")
        if fmt == "text":
            return self.to_text(width=width, color=color)
        return {"markdown": self.to_markdown, "html": self.to_html,
                "json": self.to_json}[fmt]()

    def to_text(self, width=None, color=False):
        """Aligned table, verdict, reasons and notes.

        Parameters
        ----------
        width : int, optional
            Fit the table to a terminal this wide (columns are left out, a
            line says which).  Default: plain text, the whole table.
        color : bool
            ANSI colours: statuses, notes, the verdict.

        Examples
        --------
        >>> print(result.to_text())                         # doctest: +SKIP
        """
        o = self.options
        heads, rows = _summary_cells(self.table, o["stat"], self.resolution_ns)
        heads[8] = f"{1 - o['alpha']:.0%} CI"
        doc = Document()
        doc.line(f"kvmscope diff: {o['metric']} time, {o['stat']}, per lock "
                 f"and call site", style="bold")
        doc.line(self._sides()).line(f"rule: {self._rule()}").line()
        if rows:
            doc.table(heads, rows, _RIGHT, drop=_DROP,
                      styles=[{2: STATUS_STYLES.get(r[2])} for r in rows])
        else:
            doc.line("  (no lock records)")
        doc.line()
        flagged = self.table[~self.table["status"].isin(["unchanged"])]
        for r in flagged.to_dict("records"):
            doc.line(f"  {r['lock']} {_site(r)}: {r['status']}: "
                     f"{r['reason']}",
                     style=STATUS_STYLES.get(r["status"], "").replace("bold ",
                                                                      ""))
        doc.line().line("Structure (call sites, bottom halves, timers, exit reasons, ports)",
                        style="bold")
        for line in self._structure_lines():
            doc.line(line)
        heads, crow = self._caused_cells()
        if crow:
            doc.line().line("Waiting caused: each critical section's share of the contended wait",
                            style="bold")
            doc.table(heads, crow, {3, 4, 5, 6, 7})
        doc.line()
        for n in self.notes:
            doc.line(f"note: {n}", style="yellow")
        doc.line()
        doc.line(self.verdict(),
                 style="bold red" if self.regressed else "bold green")
        return doc.render(width=width, color=color)

    def to_markdown(self):
        """Markdown for a pull-request comment: verdict, summary table,
        per-side distributions in a collapsed block, notes.

        Examples
        --------
        >>> print(result.to_markdown())                     # doctest: +SKIP
        """
        o = self.options
        heads, rows = _summary_cells(self.table, o["stat"], self.resolution_ns)
        heads[8] = f"{1 - o['alpha']:.0%} CI"
        verdict = self.verdict()
        mark = "**REGRESSION**" if self.regressed else "**No regression**"
        out = [f"## kvmscope diff: {o['metric']} time {o['stat']}", "",
               f"{mark}: {verdict.split(': ', 1)[-1]}", "",
               f"{self._sides()}.  ", f"Rule: {self._rule()}.", ""]
        out.append(markdown_table(heads, rows, _RIGHT) if rows
                   else "_no lock records_\n")
        dh, dr = _detail_cells(self.table, self.resolution_ns)
        if dr:
            out += ["<details><summary>Distributions per side</summary>", "",
                    markdown_table(dh, dr, set(range(3, 11))), "</details>",
                    ""]
        out += ["### Structure", ""] + [f"- {line.strip()}" for line in self._structure_lines()] + [""]
        heads, crow = self._caused_cells()
        if crow:
            out += ["### Waiting caused (share of the contended wait)", "",
                    markdown_table(heads, crow, {3, 4, 5, 6, 7})]
        for n in self.notes:
            out.append(f"- {n}")
        return "\n".join(out).rstrip("\n") + "\n"

    def to_json(self):
        """JSON: options, runs, verdict, notes and every row with raw values
        (ns as numbers, changes as fractions, missing as null).

        Examples
        --------
        >>> import json
        >>> json.loads(result.to_json())["regressed"]       # doctest: +SKIP
        True
        """
        rows = json.loads(self.table.to_json(orient="records",
                                             double_precision=6))
        opts = {k: v for k, v in self.options.items()}
        return json.dumps({
            "kvmscope_diff": 1,
            "options": opts,
            "base": [t.path for t in self.base],
            "new": [t.path for t in self.new],
            "regressed": self.regressed,
            "exit_status": self.exit_status,
            "verdict": self.verdict(),
            "notes": self.notes,
            "rows": rows,
            "structure": json.loads(self.structure.to_json(orient="records", double_precision=6))
            if len(self.structure) else [],
            "caused": json.loads(self.caused.to_json(orient="records", double_precision=6))
            if len(self.caused) else [],
        }, indent=1) + "\n"

    def _plotted(self):
        flagged = self.table[self.table["status"].isin(["regressed",
                                                        "improved"])]
        if len(flagged):
            return flagged, False
        judged = self.table[self.table["status"] == "unchanged"]
        judged = judged.reindex(judged["rel_change"].abs()
                                .sort_values(ascending=False).index)
        return judged.head(_TOP_UNFLAGGED), True

    def to_html(self, full_page=True):
        """One self-contained HTML file: verdict, tables, and a plot per
        regressed or improved row (else the largest changes), embedded as
        base64 PNG.

        Examples
        --------
        >>> with open("diff.html", "w") as f:                # doctest: +SKIP
        ...     f.write(result.to_html())
        """
        o = self.options
        heads, rows = _summary_cells(self.table, o["stat"], self.resolution_ns)
        heads[8] = f"{1 - o['alpha']:.0%} CI"
        dh, dr = _detail_cells(self.table, self.resolution_ns)
        e = html.escape
        body = [f"<h1>kvmscope diff: {e(o['metric'])} time "
                f"{e(o['stat'])}</h1>",
                f'<p class="verdict {"bad" if self.regressed else "ok"}">'
                f"{e(self.verdict())}</p>",
                f"<p>{e(self._sides())}<br>Rule: {e(self._rule())}.</p>",
                _html_table(heads, rows, _RIGHT, status_col=2)
                if rows else "<p>No lock records.</p>"]
        plotted, unflagged = self._plotted()
        if len(plotted):
            body.append("<h2>" + ("Largest changes (none flagged)"
                                  if unflagged else "Flagged rows") + "</h2>")
        for r in plotted.to_dict("records"):    # a loop over plotted rows
            fig = plot_row(self, r["lock"], r["callsite"])
            body.append(f'<figure><img alt="{e(r["lock"])} {e(_site(r))}" '
                        f'src="data:image/png;base64,{_png_base64(fig)}">'
                        f"<figcaption>{e(r['lock'])} {e(_site(r))}: "
                        f"{e(r['reason'])}</figcaption></figure>")
        if dr:
            body += ["<h2>Distributions per side</h2>",
                     _html_table(dh, dr, set(range(3, 11)))]
        body.append("<h2>Structure</h2><ul>" + "".join(
            f"<li>{e(line.strip())}</li>" for line in self._structure_lines()) + "</ul>")
        heads, crow = self._caused_cells()
        if crow:
            body += ["<h2>Waiting caused (share of the contended wait)</h2>",
                     _html_table(heads, crow, {3, 4, 5, 6, 7}, status_col=2)]
        if self.notes:
            body.append("<h2>Notes</h2><ul>" + "".join(
                f"<li>{e(n)}</li>" for n in self.notes) + "</ul>")
        content = "\n".join(body)
        if not full_page:
            return f"<div>{_STYLE}{content}</div>"
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>kvmscope diff</title>{_STYLE}</head><body>\n"
                f"{content}\n</body></html>\n")

    def plot(self, lock, callsite="*"):
        """Figure of one row (see :func:`plot_row`).

        Examples
        --------
        >>> result.plot("bql", "pio:debugport")             # doctest: +SKIP
        """
        return plot_row(self, lock, callsite)

    def save(self, path, fmt=None):
        """Write the report to *path*, in *fmt* or the format its extension
        names (``.html``, ``.md``, ``.json``; else text).

        Examples
        --------
        >>> result.save("diff.html")                        # doctest: +SKIP
        """
        if fmt is None:
            ext = str(path).rsplit(".", 1)[-1].lower()
            fmt = {"html": "html", "htm": "html", "md": "markdown",
                   "json": "json"}.get(ext, "text")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.render(fmt))


_STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.regressed{background:#fde2e1}tr.improved{background:#e3f5e1}
tr.insufficient,tr.new,tr.gone{color:#777}
.verdict{font-weight:bold;font-size:1.1em}.bad{color:#b00020}.ok{color:#1b7f2a}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:12px;color:#555}
</style>"""
