"""The import structure of kvmscope.analysis, read from its source: imports
point one way (format <- loading <- replay/statistics <- the Trace facade <-
views and commands), with no cycle; the library imports neither the compiled
core nor the command line; light modules stay light."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "analysis")
PACKAGE = "kvmscope.analysis"

#: Layer of every module: a module imports only modules of lower or equal
#: layers.  A new module gets a layer here.
LAYERS = {
    "schema": 0,                         # the trace format
    "progress": 0, "render": 0,          # a progress line; text tables
    "load": 1, "synth": 1,               # reading (and writing test) traces
    "select": 1,                         # report filters (window, threads, call sites, sort)
    "replay": 2,
    "stats": 3, "blame": 3,              # statistics; wait anatomy
    "reexec_model": 3, "reexec_engine": 3,   # re-execution: the model, the engine
    "reexec_seq": 3,                     # re-execution without a causal model (sequences)
    "whatif": 5,                         # re-execution as predicted traces, compare, rank
    "whatif_cli": 6,                     # replay, whatif commands
    "structdiff": 3,                     # what runs do: call sites, BHs, timers, exits, ports
    "fairness": 3,                       # hand-offs, starvation, ping-pong, convoys
    "paths": 3,                          # request paths across threads
    "convert": 1,                        # Parquet / Arrow IPC file layouts
    "sql": 3,                            # DuckDB views over a trace or a store
    "trace": 4,                          # the Trace facade
    "store": 5, "history": 5,            # many runs: the run store, history and change points
    "runs_cli": 6,                       # many runs: command bodies
    "paths_cli": 6,                      # request paths: the path command
    "plot": 5, "perfetto": 5, "report": 5, "regress": 5, "regress_render": 5,
    "cli": 6, "__main__": 6, "__init__": 6,
}

#: Imports against the layers, allowed only inside a function: the Trace
#: facade's thin ``plot_*`` methods import the plot view when called.
UPWARD_LAZY = {("trace", "plot")}

#: The command layer itself, which may import the command-line parser.
COMMAND = {"cli", "__main__", "runs_cli", "paths_cli", "whatif_cli"}


def _resolve(module, node):
    """Absolute names a ``from ... import`` or ``import`` node imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = PACKAGE.split(".")
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module
    out = []
    for alias in node.names:
        # ``from . import plot``: the submodule when there is one.
        sub = f"{prefix}.{alias.name}"
        if sub.startswith(PACKAGE + ".") and os.path.exists(
                os.path.join(SOURCE, sub[len(PACKAGE) + 1:] + ".py")):
            out.append(sub)
        else:
            out.append(prefix)
    return out


def _imports(name):
    """[(imported module, at module level?, line)] of analysis/<name>.py."""
    with open(os.path.join(SOURCE, name + ".py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = []

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend((m, not in_function, child.lineno)
                           for m in _resolve(name, child))
            walk(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    walk(tree, False)
    return out


MODULES = sorted(f[:-3] for f in os.listdir(SOURCE) if f.endswith(".py"))
IMPORTS = {m: _imports(m) for m in MODULES}


def _local(target):
    """The analysis module *target* names, or None for anything else."""
    if target.startswith(PACKAGE + "."):
        return target[len(PACKAGE) + 1:].split(".")[0]
    return "__init__" if target == PACKAGE else None


def _edges(module_level_only=False):
    return {(m, _local(t)) for m, imps in IMPORTS.items()
            for t, top, _ in imps
            if _local(t) and _local(t) != m and (top or not module_level_only)}


def _cycle(edges):
    """One cycle of the directed graph *edges* as a list of nodes, or None."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read_from_the_source():
    # The parser finds the imports the layering is about (or the other
    # tests would pass on an empty graph).
    edges = _edges()
    assert ("replay", "load") in edges and ("stats", "replay") in edges
    assert ("trace", "plot") in edges and ("trace", "plot") not in _edges(True)
    assert ("__init__", "trace") in edges
    assert _cycle({("a", "b"), ("b", "c"), ("c", "a")}) == ["a", "b", "c", "a"]


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYERS), \
        "give every module of analysis/ a layer in LAYERS"


def test_no_import_cycle_at_any_level():
    # Function-level imports count too: hiding a cycle inside a function
    # still ties the two modules together.
    assert _cycle(_edges()) is None


def test_imports_point_down_the_layers():
    upward = []
    for m, imps in IMPORTS.items():
        for target, top, line in imps:
            t = _local(target)
            if t is None or t == m or LAYERS[t] <= LAYERS[m]:
                continue
            if not top and (m, t) in UPWARD_LAZY:
                continue
            upward.append(f"analysis/{m}.py:{line} imports {t} "
                          f"(layer {LAYERS[m]} -> {LAYERS[t]})")
    assert not upward


def test_the_library_imports_neither_the_core_nor_the_command_line():
    bad = []
    for m, imps in IMPORTS.items():
        for target, _, line in imps:
            forbidden = target in ("kvmscope._core", "argparse", "kvmscope.runner") \
                or target.startswith("kvmscope._core.")
            if m not in COMMAND:
                forbidden |= target in ("kvmscope.cli", f"{PACKAGE}.cli")
            if forbidden:
                bad.append(f"analysis/{m}.py:{line} imports {target}")
    assert not bad


def test_matplotlib_is_imported_only_where_a_figure_is_drawn():
    # The CLI imports plot for every plot command: matplotlib (~0.5 s)
    # loads only inside the functions that draw.
    top = [f"analysis/{m}.py:{line}" for m, imps in IMPORTS.items()
           for target, at_top, line in imps
           if at_top and target.split(".")[0] == "matplotlib"]
    assert not top


@pytest.mark.parametrize("module, absent", [
    ("kvmscope.analysis.schema", ("pandas", "pyarrow", "kvmscope.analysis.trace")),
    ("kvmscope.analysis", ("pandas", "pyarrow")),
    ("kvmscope.analysis.plot", ("matplotlib", "kvmscope.analysis.trace")),
])
def test_importing_a_module_loads_only_what_it_needs(module, absent):
    code = (f"import sys, {module}\n"
            f"print(' '.join(m for m in {absent!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.strip()
    assert out == "", f"import {module} also imported {out}"


def test_the_lazy_names_of_the_package_are_the_real_ones():
    import kvmscope.analysis as ka
    from kvmscope.analysis import load, schema, trace
    assert ka.Trace is trace.Trace and ka.TraceError is load.TraceError
    assert ka.SCHEMAS is schema.SCHEMAS
    assert {"Trace", "TraceError", "SCHEMAS"} <= set(dir(ka))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ka.nope
