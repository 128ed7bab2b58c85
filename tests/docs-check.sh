#!/usr/bin/env bash
# Checks that the documentation names only what the code has, so that it cannot drift unseen:
#   - links between the repository's Markdown files, and their #anchors, resolve (GitHub's heading
#     slugs);
#   - every `handover_*` metric a document names is registered (dataplane/src/metrics.rs,
#     operator/src/metrics.rs: counters with `_total`), with label names the code gives it, and
#     every registered metric is in a metrics table (sidecar/README.md, README.md);
#   - every `--flag` of the user-facing documents is a flag of ours (clap `#[arg(long)]` of the
#     sidecar, operator, lab and bench binaries, the Python example's argparse) or one of the other
#     tools' flags listed below, and every "`--flag` (default)" of the sidecar's and operator's
#     READMEs and docs/limits.md states the flag's default;
#   - `handover-sidecar <command>` and `handover-operator <command>` name commands that exist;
#   - every repository path a document names in backquotes exists;
#   - a test a paragraph names beside its `*.rs` file is a function of that file.
# Needs bash and python3 only; no network, no build. Usage: tests/docs-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

exec python3 - <<'PY'
import os, re, sys

ROOT = "."
SKIP_DIRS = {".git", "target", "node_modules", "corpus", "regressions"}

def walk(exts):
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
        for f in sorted(files):
            if f.endswith(exts):
                yield os.path.normpath(os.path.join(d, f))

MD = list(walk((".md",)))
VALUES = "charts/handover/values.yaml"
DOCS = MD + [VALUES]
# The documents a user reads for how to run handover (not the test and bench journals, which
# quote other tools' command lines at length).
USER_DOCS = [d for d in DOCS if not d.startswith("tests/")]
REPO_FILES = set(p for p in walk(("",)))
REPO_DIRS = set()
for p in REPO_FILES:
    while "/" in p:
        p = p.rsplit("/", 1)[0]
        REPO_DIRS.add(p)

failures = []
def fail(where, what):
    failures.append(f"{where}: {what}")

def read(p):
    with open(p, encoding="utf-8") as f:
        return f.read()

def lines(p):
    """(number, line, in_code_block) of a document."""
    fence = False
    for i, line in enumerate(read(p).splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
            yield i, line, True
            continue
        yield i, line, fence

# ---------------------------------------------------------------- links and anchors
def slug(heading):
    h = re.sub(r"`", "", heading).strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")

anchors = {}
for d in MD:
    seen, out = {}, set()
    for _, line, code in lines(d):
        m = None if code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    anchors[d] = out

for d in MD:
    for i, line, code in lines(d):
        if code:
            continue
        for m in re.finditer(r"\]\(([^)\s]+)\)", line):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue
            path, _, frag = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(d), path)) if path else d
            if not os.path.exists(resolved):
                fail(f"{d}:{i}", f"link to {target}: no such file")
            elif frag and resolved in anchors and frag not in anchors[resolved]:
                fail(f"{d}:{i}", f"link to {target}: no heading makes #{frag}")

# ---------------------------------------------------------------- metrics
def registered(path, prefix):
    """name (with `_total` for a counter) -> the Metrics field, of every metric `path` registers."""
    src = read(path)
    types = dict(re.findall(r"^\s*pub (\w+): (.+),[ \t]*$", src, re.M))
    out = {}
    for m in re.finditer(r'register\(\s*"([a-z_]+)",\s*"(?:[^"\\]|\\.)*",\s*(?:m\.)?(\w+)(?:\.family)?\.clone\(\)', src, re.S):
        name, field = m.group(1), m.group(2)
        counter = "Counter" in types.get(field, "")
        out[f"{prefix}_{name}" + ("_total" if counter else "")] = field
    if not out:
        fail(path, "no registered metric found: has the registration changed shape? (tests/docs-check.sh)")
    return out

sidecar_metrics = registered("dataplane/src/metrics.rs", "handover")
operator_metrics = registered("operator/src/metrics.rs", "handover_operator")
metrics = {**sidecar_metrics, **operator_metrics}

# Label names each metric takes, from the code that creates its series.
labels = {name: set() for name in metrics}
code_src = "\n".join(read(p) for p in walk((".rs",)) if p.startswith(("dataplane/src", "sidecar/src", "operator/src")))
for name, field in sidecar_metrics.items():
    for m in re.finditer(r"\b" + field + r"\s*\.get_or_create\(\s*&\[([^\]]*)\]", code_src):
        labels[name].update(re.findall(r'\(\s*"(\w+)"\s*,', m.group(1)))
    m = re.search(r"\b" + field + r":\s*LabeledCounters::new\(\s*\"(\w+)\"", code_src)
    if m:
        labels[name].add(m.group(1))
# Families of typed label values (`Typed<Route>`, `Typed<BadRequest>`): their series are made
# from a variable (`[("route", route)]`) or an enum value (`[("reason", BadRequest::…)]`).
typed = {field: t for field, t in re.findall(r"^\s*pub (\w+): \w+<Typed<(\w+)>", read("dataplane/src/metrics.rs"), re.M)}
for name, field in sidecar_metrics.items():
    if field in typed:
        t = typed[field]
        labels[name].update(re.findall(r'\(\s*"(\w+)"\s*,\s*(?:' + t + r"::|" + t.lower() + r"\b)", code_src))
op_src = read("operator/src/metrics.rs")
label_sets = {s: set(re.findall(r"pub (\w+): String", body))
              for s, body in re.findall(r"pub struct (\w+Labels) \{(.*?)\n\}", op_src, re.S)}
for name, field in operator_metrics.items():
    m = re.search(r"let " + field + r" = Family::<(\w+),", op_src)
    if m:
        labels[name] = label_sets.get(m.group(1), set())

NOT_METRICS = {"handover_session", "handover_operator_"}  # a field spelt with '_'; the prefix
named = {}
for d in DOCS:
    for i, line, _ in lines(d):
        for m in re.finditer(r"\b(handover_[a-z_]+)(\s*\{([^}]*)\})?", line):
            name = m.group(1)
            if name in NOT_METRICS:
                continue
            base = re.sub(r"_(bucket|count|sum)$", "", name) if name not in metrics else name
            if base not in metrics:
                fail(f"{d}:{i}", f"{name}: no such metric (registered: dataplane/src/metrics.rs, operator/src/metrics.rs)")
                continue
            named.setdefault(base, []).append(d)
            if m.group(3) is not None:
                given = set(re.findall(r"([a-z_]+)\s*(?:[=!]~?|,|$)", m.group(3).strip()))
                unknown = given - labels[base]
                if unknown:
                    fail(f"{d}:{i}", f"{name}{{{m.group(3)}}}: label(s) {sorted(unknown)} not in the code's {sorted(labels[base])}")

def table_metrics(path):
    return set(re.findall(r"^\|[^|]*`(handover_[a-z_]+)", read(path), re.M)) | \
           {n for row in re.findall(r"^\|([^|]*)\|", read(path), re.M) for n in re.findall(r"`(handover_[a-z_]+)", row)}
for name in sidecar_metrics:
    if name not in table_metrics("sidecar/README.md"):
        fail("sidecar/README.md", f"{name} is registered but not in the metrics table")
for name in operator_metrics:
    if name not in table_metrics("README.md"):
        fail("README.md", f"{name} is registered but not in the operator's metrics table")

# ---------------------------------------------------------------- flags and commands
def clap_flags(path):
    src, out, i = read(path), {}, 0
    while (i := src.find("#[arg(", i)) >= 0:
        j, depth, quoted = i + 6, 1, False
        while depth:
            c = src[j]
            if c == '"' and src[j - 1] != "\\":
                quoted = not quoted
            elif not quoted and c in "()":
                depth += 1 if c == "(" else -1
            j += 1
        attrs = src[i + 6 : j - 1]
        i = j
        field = re.match(r"\]\s*(?:(?:///[^\n]*|#\[[^\n]*\])\s*)*(?:pub\s+)?(\w+)\s*:", src[j:])
        if not field:
            continue
        long = re.search(r'long\s*=\s*"([^"]+)"', attrs)
        if long or re.search(r"\blong\b", attrs):
            name = "--" + (long.group(1) if long else field.group(1).replace("_", "-"))
            default = re.search(r'default_value(?:_t)?\s*=\s*("(?:[^"\\]|\\.)*"|[^,]+)', attrs)
            out[name] = default.group(1).strip().strip('"') if default else None
    return out

sidecar_flags = clap_flags("sidecar/src/cli.rs")
for f in ("lab/src/demo.rs", "lab/src/demo_app.rs", "lab/src/bench.rs", "lab/src/lean_proxy.rs"):
    for k, v in clap_flags(f).items():
        if k in sidecar_flags and sidecar_flags[k] != v:
            sidecar_flags[k] = None  # two commands, two defaults: the document's context decides
        else:
            sidecar_flags.setdefault(k, v)
operator_flags = clap_flags("operator/src/main.rs")
ours = set(sidecar_flags) | set(operator_flags) | set(clap_flags("tests/bench/src/main.rs")) | {"--help", "--version"}
for p in walk((".py",)):
    ours |= set(re.findall(r'add_argument\(\s*"(--[a-z][a-z0-9-]*)"', read(p)))
for p in walk((".sh",)):
    ours |= set(re.findall(r"^\s*(--[a-z][a-z0-9-]*)\)", read(p), re.M))  # a script's `case` arms

# Flags of other tools the user-facing documents quote (kubectl, helm, cargo, curl, docker).
OTHER_TOOLS = {
    "--all", "--build-arg", "--cascade", "--create-namespace", "--data", "--force-conflicts",
    "--from-file", "--http2", "--http2-prior-knowledge", "--locked", "--mount", "--overwrite",
    "--prefix", "--release", "--reset-then-reuse-values", "--reuse-values", "--server-side",
    "--set", "--strict", "--type",
}
for d in USER_DOCS:
    for i, line, _ in lines(d):
        for m in re.finditer(r"(?<![\w-])(--[a-z][a-z0-9]*(?:-[a-z0-9]+)*)(-?)", line):
            flag, dash = m.group(1), m.group(2)
            if dash:  # `--cookie-*`: a family of flags
                if not any(f.startswith(flag + "-") for f in ours):
                    fail(f"{d}:{i}", f"{flag}-*: no flag of ours starts so")
            elif flag not in ours and flag not in OTHER_TOOLS:
                fail(f"{d}:{i}", f"{flag}: not a flag of ours (and not in OTHER_TOOLS of tests/docs-check.sh)")

CONSTS = {}
for p in walk((".rs",)):
    if p.startswith(("dataplane/src", "common/src", "sidecar/src", "lab/src", "operator/src")):
        for name, value in re.findall(r"\bconst ([A-Z][A-Z0-9_]*): \w+ = ([^;]+);", read(p)):
            CONSTS.setdefault(name, value.strip())

def value_of(default):
    """A clap default as a number or a string: constants looked up, arithmetic done."""
    d = default.split("::")[-1]
    d = CONSTS.get(d, d)
    if re.fullmatch(r"[0-9_ *<+()]+", d):
        return str(eval(d.replace("_", "")))  # digits and operators only
    return d

def normal(value):
    """A default as the docs write it, or as clap has it, in one spelling."""
    v = value.strip().strip("`").replace("\u202f", " ").replace(" ", "").replace("_", "").lower()
    units = {"kib": 1024, "mib": 1024 ** 2}
    m = re.fullmatch(r"(\d+)(kib|mib)", v)
    return str(int(m.group(1)) * units[m.group(2)]) if m else v

for d, flags in (("sidecar/README.md", sidecar_flags), ("README.md", sidecar_flags),
                 ("docs/limits.md", sidecar_flags), ("operator/README.md", operator_flags)):
    for i, line, _ in lines(d):
        # "`--flag` (default" and "`--flag`, default" as the limits tables and prose write them.
        for m in re.finditer(r"`(--[a-z-]+)`\s*(?:\(|,\s*)([0-9][0-9 ,._]*?(?:\s?(?:ms|s|m|h|KiB|MiB))?)(?=\s*[),;:])", line):
            flag, said = m.group(1), m.group(2).rstrip(" ,")
            if flag in flags and flags[flag] is not None and normal(said) != normal(value_of(flags[flag])):
                fail(f"{d}:{i}", f"{flag}: the document says {said!r}, the code's default is {flags[flag]!r}")

def commands(path, enum):
    body = re.search(r"enum " + enum + r" \{(.*?)\n\}", read(path), re.S).group(1)
    names = re.findall(r"^    ([A-Z]\w*)\b", body, re.M)
    return {re.sub(r"(?<!^)([A-Z])", r"-\1", n).lower() for n in names}

known_commands = {
    "handover-sidecar": commands("sidecar/src/cli.rs", "Command"),
    "handover-operator": commands("operator/src/main.rs", "Command"),
}
for d in DOCS:
    for i, line, _ in lines(d):
        for m in re.finditer(r"\b(handover-sidecar|handover-operator)\s+([a-z][a-z-]*)\b", line):
            binary, word = m.groups()
            if word in known_commands[binary]:
                continue
            # Prose about the binary ("handover-sidecar container") names no command.
            if re.search(r"`[^`]*\b" + binary + r"\s+" + word, line) or line.lstrip().startswith(("$", binary)):
                fail(f"{d}:{i}", f"{binary} {word}: no such command ({sorted(known_commands[binary])})")

# ---------------------------------------------------------------- paths and tests
TOP = {p.split("/")[0] for p in REPO_FILES if "/" in p}
GONE = {"tests/cluster/nodeagent"}  # tests/README.md tells of it as removed
for d in DOCS:
    here = os.path.dirname(d)
    for i, line, _ in lines(d):
        for m in re.finditer(r"`([A-Za-z0-9_.][A-Za-z0-9_./-]*/[A-Za-z0-9_./-]*)`", line):
            path = m.group(1).rstrip("/")
            if path.split("/")[0] not in TOP and not path.startswith("src/"):
                continue
            if path in GONE:
                continue
            tries = [path, os.path.normpath(os.path.join(here, path))]
            # A crate's README names its files from the crate (src/…), a module table from dataplane/src.
            tries += [os.path.join(here, path), os.path.join("dataplane/src", path)]
            if not any(t in REPO_FILES or t in REPO_DIRS for t in tries):
                fail(f"{d}:{i}", f"`{m.group(1)}`: no such file or directory")

fns_of = {}
def fns(path):
    if path not in fns_of:
        fns_of[path] = set(re.findall(r"\bfn\s+([a-z_][a-z0-9_]*)", read(path)))
    return fns_of[path]

for d in MD:
    text = read(d)
    for block in re.finditer(r"(?:[^\n]*\S[^\n]*(?:\n|$))+", text):
        para, start = block.group(0), text[: block.start()].count("\n") + 1
        files = []
        for f in re.findall(r"`([A-Za-z0-9_./-]+\.rs)`", para):
            for t in (f, os.path.normpath(os.path.join(os.path.dirname(d), f)), os.path.join("sidecar", f)):
                if t in REPO_FILES:
                    files.append(t)
                    break
        if files:
            for m in re.finditer(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+){3,})(…|\.\.\.)?`", para):
                name, prefix = m.group(1), m.group(2)
                if name.startswith("handover_"):
                    continue
                found = any((any(f.startswith(name) for f in fns(p)) if prefix else name in fns(p)) for p in files)
                if not found:
                    fail(f"{d}:{start + para[: m.start()].count(chr(10))}", f"`{name}{prefix or ''}`: no such function in {', '.join(files)}")

if failures:
    print("\n".join("FAIL: " + f for f in failures), file=sys.stderr)
    print(f"docs: {len(failures)} failed", file=sys.stderr)
    sys.exit(1)
print(f"docs: {len(MD)} Markdown files and values.yaml checked, {len(metrics)} metrics, "
      f"{len(sidecar_flags) + len(operator_flags)} flags: ok")
PY
