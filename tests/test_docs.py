"""Every `kvmscope` command the README and docs/ show runs as shown, from a
clone: on the traces shipped in traces/ (copied), or on traces an earlier
command of the same page recorded (those need KVM)."""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from kvm_env import KVM_REASON, KVM_USABLE
from kvm.helpers import KVMSCOPE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                               if f.endswith(".md"))
#: commands that start the compiled core on /dev/kvm
KVM_COMMANDS = ("run", "demo", "info")
#: a synopsis, not an example: placeholders such as TRACE or [--limit N], alternatives a|b, "..."
_SYNOPSIS = re.compile(r"\b[A-Z][A-Z_]{1,}\b|\[|\]|\.\.\.|(?<!\\)\|(?![^\"']*[\"'])")


def _blocks(text):
    """Code blocks of a Markdown page: fenced (no language, sh, console, bash) and indented."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence:
            lang = fence.group(1)
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            if lang in ("", "sh", "console", "bash", "shell"):
                yield lines[i + 1:j]
            i = j + 1
            continue
        if line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            yield [ln[4:] for ln in lines[i:j]]
            i = j
            continue
        i += 1


def examples(page):
    """(command line, expected error?) for every runnable example of a page, in order."""
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    out = []
    for block in _blocks(text):
        prompted = any(raw.strip().startswith("$ ") for raw in block)
        for k, raw in enumerate(block):
            line = raw.strip()
            if prompted and not line.startswith("$ "):
                continue                    # output shown after a `$ command`
            if line.startswith("$ "):
                line = line[2:]
            if not (line.startswith("kvmscope ") or re.match(r"^for \w+ in .*kvmscope ", line)):
                continue
            if re.match(r"^kvmscope [\w-]+:", line):
                continue                    # a message kvmscope prints, shown as output
            command = re.split(r"\s+#\s", line)[0].strip()      # drop a trailing comment
            if _SYNOPSIS.search(command.replace("kvmscope ", "", 1)):
                continue
            following = block[k + 1].strip() if k + 1 < len(block) else ""
            out.append((command, ": error:" in following))
    return out


def python_examples(page):
    """The ```python blocks of a page."""
    with open(os.path.join(ROOT, page)) as f:
        return [m.group(1) for m in re.finditer(r"```python\n(.*?)```", f.read(), re.S)]


def _needs_kvm(command):
    return _runs(command, KVM_COMMANDS)


def _runs(command, names):
    words = command.split()
    return any(words[i] == "kvmscope" and i + 1 < len(words) and words[i + 1] in names
               for i in range(len(words)))


_QEMU = []


def _qemu_usable():
    """(usable, reason) of QEMU for `kvmscope qemu` examples, probed once."""
    if not _QEMU:
        from kvmscope.qemu_run import probe
        _QEMU.append(probe())
    return _QEMU[0]


def _case_ids():
    return [p for p in PAGES if examples(p) or python_examples(p)]


@pytest.mark.parametrize("page", _case_ids())
def test_documented_commands_run_as_shown(page, tmp_path):
    assert KVMSCOPE, "the kvmscope command is not installed next to this Python"
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copytree(os.path.join(ROOT, "traces"), work / "traces")
    env = dict(os.environ, PATH=os.path.dirname(KVMSCOPE) + os.pathsep + os.environ.get("PATH", ""))
    ran = skipped = 0
    for command, expect_error in examples(page):
        if _needs_kvm(command) and not KVM_USABLE:
            skipped += 1
            continue
        if _runs(command, ("qemu",)) and not _qemu_usable()[0]:
            skipped += 1                    # QEMU missing or unusable here: the qemu marker's reason
            continue
        proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        where = f"{page}: `{command}` exited {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\n" \
                f"stderr:\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, where
        if expect_error:
            assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, where
        else:
            # 1: diff found the documented regression; 3: validate on an incomplete trace
            assert proc.returncode in (0, 1, 3), where
        ran += 1
    recorded = {"traces/demo", "traces/mine", "runs/"}       # what only a KVM example above records
    for code in python_examples(page):
        if not KVM_USABLE and any(path in code for path in recorded):
            skipped += 1
            continue
        proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"{page}: python example failed:\n{code}\n{proc.stderr[-3000:]}"
        ran += 1
    if not ran:
        pytest.skip(f"{page}: every example needs KVM ({KVM_REASON})")


def test_docs_name_no_path_a_clone_lacks():
    """Trace paths in examples exist in a clone, or an earlier example creates them."""
    for page in PAGES:
        created = set()
        for command, _ in examples(page):
            for word in shlex.split(command.replace(";", " ")):
                if word.startswith("traces/") and not any(ch in word for ch in "*$"):
                    top = "/".join(word.split("/")[:2])
                    exists = os.path.exists(os.path.join(ROOT, top))
                    assert exists or top in created or _creates(command, word), \
                        f"{page}: `{command}` names {word}, which a clone does not have"
            for i, word in enumerate(command.split()):
                if word in ("-o", "--output") and i + 1 < len(command.split()):
                    created.add("/".join(command.split()[i + 1].split("/")[:2]))



def test_docs_point_at_nothing_outside_the_clone():
    """Relative paths in the README, docs/ and traces/README.md stay inside the clone."""
    for page in PAGES + [os.path.join("traces", "README.md")]:
        with open(os.path.join(ROOT, page)) as f:
            text = f.read()
        base = os.path.dirname(os.path.join(ROOT, page))
        for m in re.finditer(r"(?:\.\./)+[\w.-]+", text):
            target = os.path.normpath(os.path.join(base, m.group(0)))
            assert target.startswith(ROOT + os.sep), f"{page}: {m.group(0)} points outside the clone"


def _creates(command, word):
    words = command.split()
    return any(words[i] in ("-o", "--output") and words[i + 1] == word for i in range(len(words) - 1))
