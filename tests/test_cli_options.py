"""Every option of the kvmscope command line refuses bad values with one line
on stderr and exit status 2, before /dev/kvm is opened or a trace is read;
-o refuses to overwrite unless --force, and then replaces only the trace."""
import json
import os
import re
import subprocess
import sys

import pytest

from kvmscope import cli, units
from kvmscope.config import SETTINGS, RunConfig, prepare_output
from kvmscope.errors import ConfigError, KvmscopeError
from kvmscope.traceformat import trace_files

from kvm.helpers import kvmscope, kvmscope_cmd

# Where a bad value slipped through, the run would stop at this device instead,
# with "cannot open /nonexistent/kvm", and the expected message would be missing.
NO_KVM = ["--kvm-device", "/nonexistent/kvm"]
RUN = ["run", "pio-storm", "--no-trace", *NO_KVM]
DEMO = ["demo", "--no-trace", *NO_KVM]
HUGE = "99999999999999999999"

# (argv, what the one line must contain); the kind of bad value in the comment
BAD = [
    # run: counts
    (RUN + ["--vcpus", "0"], "--vcpus 0 out of range: use 1 .. 64"),               # zero
    (RUN + ["--vcpus", "-1"], "--vcpus -1 out of range"),                          # negative
    (RUN + ["--vcpus", "65"], "--vcpus 65 out of range: use 1 .. 64"),             # huge
    (RUN + ["--vcpus", "two"], "bad integer 'two' for --vcpus"),                   # garbage
    (RUN + ["--vcpus", "1.5"], "bad integer '1.5' for --vcpus"),                   # not an integer
    (RUN + ["-n", "-1"], "--iterations -1 out of range: use 0 .. 4294967295"),
    (RUN + ["-n", str(2 ** 32)], "--iterations 4294967296 out of range"),
    (RUN + ["--seed", "-1"], "--seed -1 out of range: use 0 .. 18446744073709551615"),
    (RUN + ["--seed", str(2 ** 64)], "--seed 18446744073709551616 out of range"),
    (RUN + ["--ring", "0"], "--ring 0 out of range: use 64 .. 67108864"),
    (RUN + ["--ring", str(2 ** 26 + 1)], "--ring 67108865 out of range"),
    (RUN + ["--ring", HUGE], f"--ring {HUGE} out of range"),
    (RUN + ["--aio-threads", "0"], "--aio-threads 0 out of range: use 1 .. 16"),
    (RUN + ["--aio-threads", "17"], "--aio-threads 17 out of range: use 1 .. 16"),
    (RUN + ["--port-burst", "-1"], "--port-burst -1 out of range: use 0 .. 4294967295"),
    (RUN + ["--port-burst", str(2 ** 32)], "--port-burst 4294967296 out of range"),
    (RUN + ["--port-burst", HUGE], f"--port-burst {HUGE} out of range"),
    # run: sizes
    (RUN + ["--memory", "0"], "--memory 0 out of range: use 1M .. 3G, a multiple of 4K"),
    (RUN + ["--memory", "-16M"], "--memory -16M out of range"),                    # negative
    (RUN + ["--memory", "4G"], "--memory 4G out of range"),                        # huge
    (RUN + ["--memory", "16X"], "bad size '16X' for --memory"),                    # wrong unit
    (RUN + ["--memory", "1000001"], "--memory 1000001 out of range"),              # not 4K-aligned
    (RUN + ["--disk-size", "0"], "--disk-size 0 out of range: use 4K .. 1T, a multiple of 512"),
    (RUN + ["--disk-size", "4097"], "--disk-size 4097 out of range"),
    (RUN + ["--disk-size", "2T"], "--disk-size 2T out of range"),
    (RUN + ["--disk-size", "big"], "bad size 'big' for --disk-size"),
    # run: durations
    (RUN + ["--duration", "nan"], "bad duration 'nan' for --duration"),            # nan
    (RUN + ["--duration", "inf"], "bad duration 'inf' for --duration"),            # inf
    (RUN + ["--duration", "1e999"], "bad duration '1e999' for --duration: not finite"),
    (RUN + ["--duration", "0"], "--duration 0 out of range: use 1ms .. 168h"),     # zero
    (RUN + ["--duration", "-1"], "--duration -1 out of range"),                    # negative
    (RUN + ["--duration", "1000h"], "--duration 1000h out of range"),              # huge
    (RUN + ["--duration", "2xs"], "bad duration '2xs' for --duration"),            # wrong unit
    (RUN + ["--timer-period", "10us"], "--timer-period 10us out of range: use 50us .. 1min"),
    (RUN + ["--timer-period", "1.5ms"], None),                                    # fine: 1500us
    (RUN + ["--timer-period", "50.5us"], "--timer-period 50.5us out of range"),    # not whole us
    (RUN + ["--timer-period", "2h"], "--timer-period 2h out of range"),
    (RUN + ["--timer-period-us", HUGE], f"--timer-period {HUGE} out of range: use 50us .. 1min"),
    (RUN + ["--timer-period-us", "-5"], "--timer-period -5 out of range"),
    (RUN + ["--inject-hold", "pio:debugport=-1us"], "--inject-hold pio:debugport=-1us out of range: "
                                                    "use 0 .. 1s"),
    (RUN + ["--inject-hold", "pio:debugport=2s"], "--inject-hold pio:debugport=2s out of range"),
    (RUN + ["--inject-hold", "pio:debugport=1e30"], "--inject-hold pio:debugport=1e30 out of range"),
    (RUN + ["--inject-hold", "pio:debugport=2xs"], "bad duration '2xs' for --inject-hold"),
    (RUN + ["--inject-hold", "pio:debugport"], "use CALLSITE=DURATION"),
    (RUN + ["--inject-hold", "=2us"], "use CALLSITE=DURATION"),
    # run: choices, names, combinations (refused by RunConfig.validate, still before KVM)
    (RUN + ["--clock", "rdtsc"], "argument --clock: invalid choice: 'rdtsc'"),
    (RUN + ["--irqchip", "pic"], "argument --irqchip: invalid choice"),
    (RUN + ["--compression", "gzip"], "argument --compression: invalid choice"),
    (RUN + ["--bogus"], "unrecognized arguments: --bogus"),
    (["run", "no-such-guest", "--no-trace", *NO_KVM], "unknown guest 'no-such-guest'"),
    (["run", "disk-io", "-m", "2M", "--no-trace", *NO_KVM], "--memory 2M is too small for disk-io"),
    (["run", "pio-storm", *NO_KVM], "no trace directory given: use -o DIR, or --no-trace"),
    (["run"], "the following arguments are required: GUEST"),
    # demo shares run's options
    (DEMO + ["--duration", "0"], "--duration 0 out of range"),
    (DEMO + ["--ring", "1"], "--ring 1 out of range"),
    (DEMO + ["-n", "-5"], "--iterations -5 out of range"),
    # analysis commands (the trace is never read: the options are refused first)
    (["report", "t", "--limit", "-1"], "--limit -1 out of range: use 0 .. 2147483647"),
    (["report", "t", "--top", "-1"], "--top -1 out of range"),                     # the alias
    (["report", "t", "--top", "ten"], "bad integer 'ten' for --top"),
    (["report", "t", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["validate", "t", "--limit", "-1"], "--limit -1 out of range"),
    (["validate", "t", "--tolerance-ns", "-5"], "--tolerance -5 out of range: use 0 .. 1min"),
    (["validate", "t", "--tolerance", "2min"], "--tolerance 2min out of range"),
    (["validate", "t", "--tolerance", "5xs"], "bad duration '5xs' for --tolerance"),
    (["plot", "t", "-o", "x.png", "--bins", "0"], "--bins 0 out of range: use 1 .. 100000"),
    (["plot", "t", "-o", "x.png", "--bins", "-5"], "--bins -5 out of range"),
    (["plot", "t", "-o", "x.png", "--dpi", "100000"], "--dpi 100000 out of range: use 20 .. 1200"),
    (["plot", "t", "-o", "x.png", "--dpi", "0"], "--dpi 0 out of range"),
    (["plot", "t", "-o", "x.png", "--window", "5:3"], "empty window '5:3'"),
    (["plot", "t", "-o", "x.png", "--window", "1.5:2"], "bad window bound '1.5'"),
    (["plot", "t", "-o", "x.png", "--window", "-1ms:"], "bad window bound '-1ms'"),
    (["export", "t", "--perfetto", "x.json", "--max-events", "-1"], "--max-events -1 out of range"),
    (["export", "t", "--perfetto", "x.json", "--window", "x"], "bad window 'x'"),
    (["diff", "a", "b", "--threshold", "ten"], "bad --threshold 'ten'"),
    (["diff", "a", "b", "--threshold", "-5%"], "--threshold -5% out of range"),
    (["diff", "a", "b", "--threshold", "nan"], "--threshold nan out of range"),
    (["diff", "a", "b", "--alpha", "0"], "--alpha 0 out of range"),
    (["diff", "a", "b", "--alpha", "1.5"], "--alpha 1.5 out of range"),
    (["diff", "a", "b", "--min-delta", "-1us"], "--min-delta -1us out of range"),
    (["diff", "a", "b", "--min-delta", "fast"], "bad duration 'fast' for --min-delta"),
    (["diff", "a", "b", "--min-count", "0"], "--min-count 0 out of range"),
    (["diff", "a", "b", "--resamples", "10"], "--resamples 10 out of range: use 100 .. 1000000"),
    (["diff", "a", "b", "--blocks", "0"], "--blocks 0 out of range"),
    (["diff", "a", "b", "--seed", "-1"], "--seed -1 out of range"),
    (["info", "--format", "yaml"], "argument --format: invalid choice"),
    (["no-such-command"], "argument COMMAND: invalid choice: 'no-such-command'"),
]


def _command(argv):
    return argv[0] if argv[0] in cli.build_parser()._subparsers._group_actions[0].choices else None


@pytest.mark.parametrize("argv, message", [b for b in BAD if b[1]], ids=lambda a: " ".join(a)
                         if isinstance(a, list) else None)
def test_a_bad_value_is_one_line_and_status_2(capsys, argv, message):
    status = cli.main(argv)
    out, err = capsys.readouterr()
    command = _command(argv)
    assert status == 2, err
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith(f"kvmscope {command}: error: " if command else "kvmscope: error: ")
    assert message in err


def test_values_with_units_reach_the_config():
    args = cli.build_parser().parse_args(
        RUN + ["--duration", "1.5", "--timer-period", "1.5ms", "-m", "32M", "--disk-size", "4K",
               "--inject-hold", "pio:debugport=2us", "--inject-hold", "main:dispatch=300"])
    config = cli._config_from_args(args)
    config.validate()
    assert config.duration == 1.5 and config.timer_period_us == 1500
    assert config.memory == 32 << 20 and config.disk_size == 4096
    assert config.inject_hold == {"pio:debugport": 2000, "main:dispatch": 300}


def test_the_old_timer_period_spelling_works_with_a_note(capsys):
    args = cli.build_parser().parse_args(RUN + ["--timer-period-us", "500"])
    assert args.timer_period_us == 500
    err = capsys.readouterr().err
    assert err == "kvmscope run: note: --timer-period-us is deprecated: use --timer-period 500us\n"
    args = cli.build_parser().parse_args(["validate", "t", "--tolerance-ns", "5"])
    assert args.tolerance_ns == 5 and "use --tolerance 5ns" in capsys.readouterr().err


def test_top_and_limit_are_one_option():
    parse = cli.build_parser().parse_args
    assert parse(["report", "t", "--top", "3"]).limit == 3
    assert parse(["report", "t", "--limit", "4"]).limit == 4
    assert parse(["validate", "t"]).limit == 100
    assert "--top" not in cli.build_parser()._subparsers._group_actions[0].choices["report"].format_help()


@pytest.mark.parametrize("argv, message", [
    (["run", "pio-storm", "--port-burst", "-1"], "--port-burst -1 out of range"),
    (["plot", "t", "--dpi", "100000", "-o", "x.png"], "--dpi 100000 out of range"),
    (["validate", "t", "--limit", "-1"], "--limit -1 out of range"),
    (["run", "pio-storm", "--no-trace", "--vcpus", HUGE], f"--vcpus {HUGE} out of range"),
])
def test_the_real_executable_gives_one_line(argv, message):
    proc = kvmscope(*argv, check=2)
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------
# the Python API refuses the same values

@pytest.mark.parametrize("field, value, message", [
    ("vcpus", 0, "--vcpus 0 out of range"),
    ("vcpus", True, "bad integer True for --vcpus"),
    ("duration", float("nan"), "bad duration nan for --duration"),
    ("duration", 0, "--duration 0 out of range"),
    ("duration", "2xs", "bad duration '2xs' for --duration"),
    ("memory", "16X", "bad size '16X' for --memory"),
    ("memory", 5 << 30, "--memory 5368709120 out of range"),
    ("port_burst", 2 ** 32, "--port-burst 4294967296 out of range"),
    ("timer_period_us", 10, "--timer-period 10 out of range"),
    ("inject_hold", {"pio:debugport": "2s"}, "--inject-hold pio:debugport=2s out of range"),
    ("ring_records", 1 << 27, "--ring 134217728 out of range"),
    ("clock", "rdtsc", "--clock rdtsc: use auto or tsc or monotonic"),
])
def test_run_config_validate_names_the_option_and_range(field, value, message):
    with pytest.raises(ValueError) as e:
        RunConfig(trace=False, **{field: value}).validate()
    assert isinstance(e.value, ConfigError) and isinstance(e.value, KvmscopeError)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_every_setting_states_its_range():
    for s in SETTINGS.values():
        assert " .. " in s.describe()
        with pytest.raises(ConfigError, match=f"^{s.option} .* out of range: use "):
            s.parse(s.high + s.multiple if s.kind != "duration" else units.format_duration(
                s.high + units.NS_PER["s"], sep="", exact=True))


# --------------------------------------------------------------------------
# -o and --force

def _old_trace(path, extra=True):
    path.mkdir(parents=True)
    for name in trace_files():
        (path / name).write_text("old")
    (path / "meta.json").write_text(json.dumps({"format": "kvmscope-trace", "state": "complete"}))
    if extra:
        (path / "notes.txt").write_text("mine")
    return path


def _run_into(capsys, out, *more):
    status = cli.main(["run", "pio-storm", "-o", str(out), *NO_KVM, *more])
    return status, capsys.readouterr().err


def test_an_existing_trace_is_refused_without_force(capsys, tmp_path):
    old = _old_trace(tmp_path / "t")
    status, err = _run_into(capsys, old)
    assert status == 2 and err == f"kvmscope run: error: {old} already holds a trace: use --force to replace it\n"
    assert (old / "exits.arrows").read_text() == "old" and (old / "notes.txt").exists()


def test_a_directory_without_a_trace_is_refused_even_with_force(capsys, tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("meow")
    (other / "exits.arrows").write_text("not ours")
    for more in ((), ("--force",)):
        status, err = _run_into(capsys, other, *more)
        assert status == 2 and err.count("\n") == 1
        assert "is not empty and holds no kvmscope trace" in err
    assert sorted(os.listdir(other)) == ["cat.jpg", "exits.arrows"]


def test_a_regular_file_is_refused(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for more in ((), ("--force",)):
        status, err = _run_into(capsys, f, *more)
        assert status == 2 and "exists and is not a directory" in err
    assert f.read_text() == "x"


def test_demo_refuses_its_default_directory_twice(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _old_trace(tmp_path / "traces" / "demo", extra=False)
    assert cli.main(["demo", *NO_KVM]) == 2
    assert capsys.readouterr().err == ("kvmscope demo: error: traces/demo already holds a trace: "
                                       "use --force to replace it\n")


def test_an_empty_or_missing_directory_is_fine():
    for path in ("/nonexistent-parent/new", os.devnull + "-no"):
        RunConfig(output=path).validate()


def test_prepare_output_removes_only_the_trace_files(tmp_path):
    old = _old_trace(tmp_path / "t")
    config = RunConfig(output=str(old), force=True)
    config.validate()
    removed = prepare_output(config)
    assert sorted(removed) == sorted(trace_files())
    assert os.listdir(old) == ["notes.txt"]
    config.validate()                    # what is left is accepted for this recording
    assert prepare_output(config) == []
    with pytest.raises(ConfigError, match="holds no kvmscope trace"):
        RunConfig(output=str(old), force=True).validate()


@pytest.mark.kvm
def test_force_replaces_a_real_trace_and_keeps_other_files(tmp_path):
    from kvmscope.analysis import Trace
    out = tmp_path / "t"
    kvmscope("run", "pio-storm", "-n", 100, "-q", "-o", out, check=0)
    (out / "notes.txt").write_text("mine")
    refused = kvmscope("run", "pio-storm", "-n", 200, "-q", "-o", out, check=2)
    assert "already holds a trace: use --force" in refused.stderr
    assert len(Trace.load(out).exits) == 101
    kvmscope("run", "pio-storm", "-n", 200, "-q", "-o", out, "--force", check=0)
    trace = Trace.load(out)
    assert len(trace.exits) == 201 and trace.meta["config"]["iterations"] == 200
    assert (out / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------
# --format json

def test_guests_json_lists_every_guest(capsys):
    assert cli.main(["guests", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {g["name"] for g in doc} >= {"pio-storm", "disk-io", "mixed"}
    assert all(g["default_iterations"] >= 0 and g["min_memory"] >= 1 << 20 for g in doc)


@pytest.mark.kvm
def test_run_and_info_json(tmp_path):
    proc = kvmscope("run", "serial-hello", "-n", 2, "--no-trace", "--format", "json", check=0)
    doc = json.loads(proc.stdout)                  # the console echo is not mixed in
    assert doc["ok"] and doc["trace"] is None and doc["stop_reason"] == "guest exit"
    assert doc["stats"]["vcpus"][0]["exits"] > 2 and doc["config"]["iterations"] == 2
    info = json.loads(kvmscope("info", "--format", "json", check=0).stdout)
    assert info["api_version"] == 12 and info["clock"]["name"] == "CLOCK_MONOTONIC"


# --------------------------------------------------------------------------
# help and imports

def _subparsers():
    return cli.build_parser()._subparsers._group_actions[0].choices


def test_every_option_has_help_a_metavar_and_its_default():
    for name, p in _subparsers().items():
        assert p.description, name
        help_text = p.format_help()
        for action in p._actions:
            if action.help == "==SUPPRESS==" or action.dest == "help":
                continue
            assert action.help, (name, action.dest)
            if action.option_strings and action.nargs != 0:
                assert action.metavar or action.choices, (name, action.dest)
        for option in ("--format", "--limit", "--ring", "--dpi", "--bins", "--max-events"):
            for action in p._actions:
                if option in action.option_strings and action.default is not None:
                    assert f"(default: {action.default}" in " ".join(help_text.split()) or \
                        option == "--ring", (name, option)
    assert "(default: 65536)" in _subparsers()["run"].format_help()


def _modules_after(code):
    proc = subprocess.run([sys.executable, "-c", "import sys\n" + code +
                           "\nprint(sorted(m for m in ('pandas', 'matplotlib') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_building_the_parser_and_help_import_no_pandas_or_matplotlib():
    assert _modules_after("import kvmscope.cli; kvmscope.cli.build_parser()") == "[]"
    assert _modules_after("import kvmscope.cli; kvmscope.cli.main(['--help'])") == "[]"
    assert _modules_after("import kvmscope.cli; kvmscope.cli.main(['run', 'pio-storm', '--help'])") == "[]"
    assert _modules_after("import kvmscope.cli; kvmscope.cli.main(['plot', '--help'])") == "[]"


@pytest.mark.kvm
def test_a_run_imports_no_pandas_or_matplotlib():
    assert _modules_after("import kvmscope.cli; assert kvmscope.cli.main("
                          "['run', 'pio-storm', '-n', '1', '--no-trace', '-q']) == 0") == "[]"


def test_python_dash_m_kvmscope_cli_is_the_same_command():
    proc = subprocess.run(kvmscope_cmd("report", "t", "--limit", "-1"), capture_output=True, text=True)
    alt = subprocess.run([sys.executable, "-m", "kvmscope.cli", "report", "t", "--limit", "-1"],
                         capture_output=True, text=True)
    assert proc.returncode == alt.returncode == 2 and proc.stderr == alt.stderr


# --------------------------------------------------------------------------
# units

@pytest.mark.parametrize("text, unit, ns", [
    ("500ns", "ns", 500), ("2us", "ns", 2000), ("2µs", "ns", 2000), ("1.5ms", "ns", 1_500_000),
    ("2s", "ns", 2 * 10 ** 9), ("2", "s", 2 * 10 ** 9), ("2", "us", 2000), ("1 ms", "s", 10 ** 6),
    ("1min", "s", 60 * 10 ** 9), ("1_000", "ns", 1000), (250, "ns", 250), (0.5, "s", 5 * 10 ** 8),
])
def test_parse_duration(text, unit, ns):
    assert units.parse_duration(text, unit) == ns


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "2xs", "", "us", "1e999", float("nan"), True])
def test_parse_duration_refuses(text):
    with pytest.raises(ConfigError):
        units.parse_duration(text)


def test_sizes_rates_and_formatting():
    assert units.parse_size("16M") == 16 << 20 and units.parse_size("1G") == 1 << 30
    assert units.parse_size("4096") == 4096 and units.parse_size("16MiB") == 16 << 20
    for bad in ("16X", "1.3K", "M", "nan"):
        with pytest.raises(ConfigError):
            units.parse_size(bad)
    assert units.format_size(3 << 30) == "3G" and units.format_size(4097) == "4097"
    assert units.parse_rate("10k/s") == 10_000 and units.format_rate(120_007) == "120.0k"
    assert units.format_duration(850) == "850 ns" and units.format_duration(12_345, sep="") == "12.3us"
    assert units.format_duration(4_560_000) == "4.56 ms" and units.format_duration(90e9) == "90.0 s"
    assert units.format_duration(50_000, exact=True) == "50 us"
    assert units.format_duration(12_345, micro="µs") == "12.3 µs"


def test_windows():
    w = units.parse_window("10ms:12.5ms")
    assert w.resolve(1000, 10 ** 9) == (10_001_000, 12_501_000)
    assert units.parse_window("1100:1300").resolve(1000, 5000) == (1100, 1300)
    assert units.parse_window(":1us").resolve(1000, 5000) == (1000, 2000)
    assert units.parse_window("1us:").resolve(1000, 5000) == (2000, 5000)
    with pytest.raises(ConfigError, match="empty window"):
        units.parse_window("3ms:").resolve(0, 10 ** 6)          # starts after the trace ends
    for bad in ("1ms", "a:b", "5:3", "1.5:2", "1:2:3"):
        with pytest.raises(ConfigError):
            units.parse_window(bad)


def test_docs_cli_md_describes_every_option():
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    for name, p in _subparsers().items():
        assert f"`{name}" in doc, name
        for action in p._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert re.search(rf"(?<![\w-]){option}(?![\w-])", doc), (name, option)


def test_python_dash_m_kvmscope_is_the_command():
    from kvmscope import __version__
    r = subprocess.run([sys.executable, "-m", "kvmscope", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == f"kvmscope {__version__}\n"
    r = subprocess.run([sys.executable, "-m", "kvmscope", "report", "--section", "bogus", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'bogus'" in r.stderr
