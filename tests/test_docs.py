"""The documented commands work as written: every `python -m launch.run ...`, `make run ARGS=...` and
`byz-run ...` command line in README.md, docs/*.md and docker/README.md composes and validates the way
`launch.run.cli` takes it from a user's shell: hydra composition (`launch.node.compose`), then
`launch.validate.validate` (check_data=False: nothing is read or downloaded), and for a `-m/--multirun`
sweep every value of its grid (`launch.run._probe_jobs`). The device is not checked (`check_device`), so
GPU-only settings (device=cuda, comm.backend=nccl) are checked on any machine. No process group starts.

The extractor reads fenced code blocks and inline code spans, joins backslash continuations, splits shell
statements (`;`, `&&`, `|`), drops comments and parses words with shlex, as the shell does. It follows
the docs' shell snippets: `for VAR in ...; do` loops (every value of every loop variable is used once, as
in a sweep) and shell functions that wrap the entry (RESULTS.md's `run NAME overrides...`). What cannot
be taken literally is a listed skip (SKIPPED_COMMANDS, SKIPPED_MENTIONS) with its reason, never a silent
one: every mention of an entry in a scanned file is a checked command or a listed skip.
"""
from __future__ import annotations

import copy
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from common.config import ConfigError
from launch.node import CONF_DIR, compose
from launch.run import _probe_jobs, composition_error
from launch.validate import validate
from tests.helpers import ROOT

DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in Path(ROOT, "docs").glob("*.md"))]
if Path(ROOT, "docker", "README.md").is_file():
    DOCS.append("docker/README.md")
#: files that must yield checked commands (a guard against an extractor that finds nothing)
EXPECTED = ["README.md", "docs/REPRODUCING.md", "docs/RESULTS.md", "docs/PERFORMANCE.md"]

#: (file, command as extracted) -> why it is not checked
SKIPPED_COMMANDS = {
    ("docs/DESIGN.md", "python -m launch.run [hydra overrides]"): "a synopsis: `[hydra overrides]` is a placeholder",
}
#: (file, text on the line, why): mentions of an entry that are not a command line
SKIPPED_MENTIONS = [
    ("README.md", "(or: byz-run)", "a comment naming the console script as an alias of the command on its line"),
    ("docs/DESIGN.md", "make run | test | lint | bench",
     "the layout listing names the Makefile's targets, not a command"),
]

#: a mention of an entry anywhere in a scanned file
MENTION = re.compile(r"\bpython3?\s+-m\s+launch\.run\b|\bmake\s+run\b|\bbyz-run\b")
PYTHON = re.compile(r"(\S*/)?python(3(\.\d+)?)?")
ASSIGN = re.compile(r"[A-Za-z_]\w*=")
FUNC = re.compile(r"\s*([A-Za-z_][\w-]*)\s*\(\)\s*\{(.*?);?\s*\}\s*(#.*)?")
VAR = re.compile(r"\$(?:\{(\w+)(%% \*)?\}|(\w+|@))")
#: a hydra override: key=value, +key=value, ++key=value, ~key[=value]
OVERRIDE = re.compile(r"~[\w.@/-]+(=.*)?|\+{0,2}[A-Za-z_][\w.@/-]*=.*")
FENCE = re.compile(r"\s*(```|~~~)")
INLINE = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


class Unresolved(Exception):
    """A shell variable the docs do not define."""


@dataclass
class Command:
    doc: str
    line: int
    last: int
    text: str  # the statement as extracted: continuations joined, comment dropped
    runs: list[list[str]] = field(default_factory=list)  # arguments after the entry, one per loop binding
    problem: str | None = None  # why it cannot be taken literally

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def segments(text: str):
    """(kind, first line, last line, logical line) for every logical line of a fenced block ("fence",
    backslash continuations joined) and every inline code span ("inline", newlines read as spaces)."""
    lines = text.splitlines()
    para: list[tuple[int, str]] = []

    def spans():
        if para:
            joined, starts = "", []
            for no, ln in para:
                starts.append((len(joined), no))
                joined += ln + "\n"
            for m in INLINE.finditer(joined):
                first = max(no for off, no in starts if off <= m.start())
                yield "inline", first, first + m[0].count("\n"), " ".join(m[2].split())
            para.clear()

    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            yield from spans()
            j, buf, start = i + 1, [], None
            while j < len(lines) and not FENCE.match(lines[j]):
                start = start or j + 1
                ln = lines[j].rstrip()
                if ln.endswith("\\"):
                    buf.append(ln[:-1].strip())
                else:
                    yield "fence", start, j + 1, " ".join([*buf, ln.strip()])
                    buf, start = [], None
                j += 1
            if buf:
                yield "fence", start, j, " ".join(buf)
            i = j + 1
            yield "end", 0, 0, ""  # loops do not outlive their block
            continue
        if lines[i].strip():
            para.append((i + 1, lines[i]))
        else:
            yield from spans()
        i += 1
    yield from spans()


def statements(line: str) -> list[str]:
    """A shell line split at ; && || | & (outside quotes and ${...}), without its comment."""
    out, cur, i, quote, depth = [], [], 0, None, 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                cur.append(line[i:i + 2])
                i += 2
                continue
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "\\":
            cur.append(line[i:i + 2])
            i += 2
            continue
        elif c == "$" and line[i + 1:i + 2] == "{":
            depth += 1
        elif c == "}" and depth:
            depth -= 1
        elif c == "#" and not depth and (i == 0 or line[i - 1].isspace()):
            break
        elif c in ";|&" and not depth and not (c == "&" and cur and cur[-1] == ">"):  # not 2>&1
            out.append("".join(cur))
            cur = []
            i += 1
            while i < len(line) and line[i] in "|&":
                i += 1
            continue
        cur.append(c)
        i += 1
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def expand(text: str, env: dict[str, str], positional: list[str] | None = None) -> str:
    """Shell parameter expansion: $X, ${X}, ${X%% *} (the first word), $1.., "$@"; an unquoted value is
    left to word splitting, a double-quoted one stays one word."""
    text = text.replace('"$@"', "\0")
    out, quote = [], None
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\0":
            out.append(" ".join(shlex.quote(a) for a in positional or []))
            i += 1
            continue
        if c == "'" and quote != '"':
            quote = None if quote else "'"
        elif c == '"' and quote != "'":
            quote = None if quote else '"'
        elif c == "$" and quote != "'" and (m := VAR.match(text, i)):
            name = m[1] or m[3]
            if name == "@":
                value = " ".join(positional or [])
            elif name.isdigit():
                if not positional or int(name) > len(positional):
                    raise Unresolved(f"${name}")
                value = positional[int(name) - 1]
            elif name in env:
                value = env[name]
            else:
                raise Unresolved(f"${name}")
            if m[2]:
                value = value.split(" ")[0]
            if quote == '"':
                value = re.sub(r'(["\\$`])', r"\\\1", value)
            out.append(value)
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def entry_args(words: list[str]) -> list[str] | None:
    """The arguments that reach `launch.run` from a command's words, or None when it is another
    command. `make run ARGS="..."` runs `python -m launch.run $(ARGS)` in the shell, which splits ARGS."""
    while words and ASSIGN.match(words[0]):  # VAR=value before the command
        words = words[1:]
    if not words:
        return None
    if PYTHON.fullmatch(words[0]) and words[1:3] == ["-m", "launch.run"]:
        return words[3:]
    if words[0] == "byz-run":
        return words[1:]
    if words[0] == "make" and "run" in [w for w in words[1:] if not w.startswith("-") and "=" not in w]:
        variables = dict(w.split("=", 1) for w in words[1:] if ASSIGN.match(w))
        return shlex.split(variables.get("ARGS", ""))
    return None


def bindings(loops: list[tuple[str, list[str]]], text: str) -> list[dict[str, str]]:
    """Values of the loop variables that `text` uses: the first of each, then each further value of one
    variable in turn (every value once, as `_probe_jobs` does for a sweep)."""
    used = {m[1] or m[3] for m in VAR.finditer(text)}
    loops = [(v, vals) for v, vals in loops if v in used and vals]
    first = {v: vals[0] for v, vals in loops}
    out = [first]
    for v, vals in loops:
        out += [{**first, v: x} for x in vals[1:]]
    return out


def function_runs(body: list[str], args: list[str], env: dict[str, str]) -> list[list[str]]:
    """The entry's arguments when a shell function of assignments, `shift` and commands is called."""
    env, runs = dict(env), []
    for st in body:
        if st == "shift":
            args = args[1:]
        elif re.fullmatch(r"[A-Za-z_]\w*=\S*", st):
            key, _, value = st.partition("=")
            env[key] = expand(value, env, args)
        elif (found := entry_args(shlex.split(expand(st, env, args)))) is not None:
            runs.append(found)
    return runs


def extract(doc: str, text: str) -> tuple[list[Command], dict[int, int]]:
    """The entry's command lines of one file, and the lines of shell functions that wrap the entry,
    with how often each is called."""
    commands: list[Command] = []
    funcs: dict[str, tuple[int, list[str]]] = {}
    calls: Counter[int] = Counter()
    loops: list[tuple[str, list[str]]] = []
    for kind, first, last, line in segments(text):
        if kind == "end" or kind == "inline":
            loops = []
        if kind == "end":
            continue
        if m := FUNC.fullmatch(line):
            body = statements(m[2])
            if any(MENTION.search(st) for st in body):
                funcs[m[1]] = (first, body)
                calls.setdefault(first, 0)
            continue
        pending = statements(line)
        while pending:
            st = pending.pop(0)
            word, _, rest = st.partition(" ")
            if word in ("do", "then", "else", "(", "{"):
                pending[:0] = [rest.strip()] if rest.strip() else []
                continue
            if word == "for":
                words = shlex.split(st)
                loops.append((words[1], words[3:] if words[2:3] == ["in"] else []))
                continue
            if word == "done":
                loops = loops[:-1]
                continue
            try:
                raw = shlex.split(st)
            except ValueError as e:
                if MENTION.search(st):
                    commands.append(Command(doc, first, last, st, problem=f"shlex: {e}"))
                continue
            called = next((w for w in raw if not ASSIGN.match(w)), None)
            if entry_args(raw) is None and (called not in funcs or kind == "inline"):  # `run`: a name in prose
                continue
            cmd = Command(doc, first, last, " ".join(st.split()))
            try:
                for env in bindings(loops, st):
                    words = shlex.split(expand(st, env))
                    while words and ASSIGN.match(words[0]):
                        words = words[1:]
                    if words and words[0] in funcs and kind == "fence":
                        calls[funcs[words[0]][0]] += 1
                        cmd.runs += function_runs(funcs[words[0]][1], words[1:], env)
                    else:
                        cmd.runs.append(entry_args(words))
            except Unresolved as e:
                cmd.problem = f"the shell variable {e} is not defined in the docs"
            bad = [a for run in cmd.runs for a in run
                   if a not in ("-m", "--multirun") and (not OVERRIDE.fullmatch(a) or "..." in a or "<" in a)]
            if bad and not cmd.problem:
                cmd.problem = f"placeholder {bad[0]!r}"
            commands.append(cmd)
    return commands, dict(calls)


EXTRACTED = {doc: extract(doc, Path(ROOT, doc).read_text()) for doc in DOCS}
COMMANDS = [c for doc in DOCS for c in EXTRACTED[doc][0]]


def _ids(commands: list[Command]) -> list[str]:
    seen: Counter[str] = Counter()
    out = []
    for c in commands:
        seen[c.where] += 1
        out.append(c.where if seen[c.where] == 1 else f"{c.where}#{seen[c.where]}")
    return out


#: config groups: an override of one changes the defaults list, any other key is a value set afterwards
GROUPS = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
_BASES: dict[tuple[str, ...], DictConfig] = {}


def composed(job: list[str]) -> DictConfig:
    """`launch.node.compose(job)` in hydra's own two steps, the first one cached: compose with the config
    group (and hydra.*) overrides, then apply the value overrides with hydra's own
    `_apply_overrides_to_config`, as its config loader does after the defaults list (a sweep varies
    values mostly: 250 jobs need about 90 compositions). `test_composition_in_two_steps_is_hydras`
    checks that both ways give the same config."""
    parsed = OverridesParser.create().parse_overrides(job)
    is_base = [o.key_or_group in GROUPS or o.key_or_group.startswith("hydra") for o in parsed]
    key = tuple(o.input_line for o, b in zip(parsed, is_base) if b)
    if key not in _BASES:
        _BASES[key] = compose(list(key))
    cfg = copy.deepcopy(_BASES[key])  # validate resolves in place
    ConfigLoaderImpl._apply_overrides_to_config([o for o, b in zip(parsed, is_base) if not b], cfg)
    return cfg


def user_jobs(args: list[str]) -> list[list[str]]:
    """The override lists that `launch.run.cli` composes for these arguments: one, or for a sweep one per
    value of its grid (`_probe_jobs`). cli leaves hydra.* keys to hydra's main; they are composed here
    too, so that a misspelled hydra key fails as it would there."""
    flags = [a for a in args if a.startswith("-")]
    assert set(flags) <= {"-m", "--multirun"}, f"flags {flags}: cli skips its checks, not covered here"
    sweep = bool(flags) or any(a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args)
    plain = [a for a in args if not a.startswith("-") and not a.startswith("hydra.")]
    hydra = [a for a in args if a.startswith("hydra.")]
    if not sweep:
        swept = [o.input_line for o in OverridesParser.create().parse_overrides(plain) if o.is_sweep_override()]
        assert not swept, f"{swept}: a sweep value without --multirun (hydra refuses it in a single run)"
    return [[*job, *hydra] for job in (_probe_jobs(plain) if sweep else [plain])]


@pytest.mark.parametrize("cmd", COMMANDS, ids=_ids(COMMANDS))
def test_documented_command_composes_and_validates(cmd: Command):
    if cmd.problem:
        reason = SKIPPED_COMMANDS.get((cmd.doc, cmd.text))
        assert reason, (f"{cmd.where}: `{cmd.text}` cannot be taken literally ({cmd.problem}): fix the doc, "
                        f"or list it in SKIPPED_COMMANDS with the reason")
        pytest.skip(f"{reason} ({cmd.problem})")
    assert cmd.runs, f"{cmd.where}: `{cmd.text}` runs no command"
    errors = []
    for args in cmd.runs:
        try:
            jobs = user_jobs(args)
        except AssertionError as e:
            errors.append(f"{' '.join(args)}: {e}")
            continue
        for job in jobs:
            try:
                cfg = composed(job)
            except Exception as e:  # noqa: BLE001 - hydra raises several types for user errors, as in cli
                errors.append(f"{' '.join(job)}: error: {composition_error(e)}")
                continue
            try:
                validate(cfg, check_data=False)
            except ConfigError as e:
                errors.append(f"{' '.join(job)}: error: {e}")
    assert not errors, f"{cmd.where}: `{cmd.text}`\n" + "\n".join(errors)


@pytest.mark.parametrize("doc", EXPECTED)
def test_the_extractor_finds_the_commands_of_each_file(doc):
    assert doc in DOCS, f"{doc} is missing"
    checked = [c for c in EXTRACTED[doc][0] if not c.problem]
    assert checked, f"{doc}: no command found; the docs have some, so the extractor is broken"


def loose_mentions(doc: str, text: str, commands: list[Command], calls: dict[int, int],
                   skips: list[tuple[str, str, str]]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Mentions of an entry in `text` that belong to no extracted command (a command line holds one), no
    called shell function and no skip entry; and the skip entries that matched no mention."""
    lines = text.splitlines()
    room = Counter(c.line for c in commands)
    spans = {c.line: c.last for c in commands}
    room.update({line: 1 for line, n in calls.items() if n})
    spans.update({line: line for line in calls})
    unused, loose = [s for s in skips if s[0] == doc], []
    for m in MENTION.finditer(text):
        no = text.count("\n", 0, m.start()) + 1
        owner = next((first for first, last in sorted(spans.items()) if first <= no <= last and room[first]), None)
        if owner is not None:
            room[owner] -= 1
            continue
        skip = next((s for s in unused if s[1] in lines[no - 1]), None)
        if skip:
            unused.remove(skip)
        else:
            loose.append(f"{doc}:{no}: {lines[no - 1].strip()}")
    return loose, unused


@pytest.mark.parametrize("doc", DOCS)
def test_every_mention_of_an_entry_is_checked_or_a_listed_skip(doc):
    """Each `python -m launch.run` / `make run` / `byz-run` in the file's text, code or prose, belongs to
    an extracted command (or a shell function that is called) or to a SKIPPED_MENTIONS entry."""
    loose, unused = loose_mentions(doc, Path(ROOT, doc).read_text(), *EXTRACTED[doc], SKIPPED_MENTIONS)
    assert not loose, "mentions that are neither a checked command nor in SKIPPED_MENTIONS:\n" + "\n".join(loose)
    assert not unused, f"stale SKIPPED_MENTIONS entries: {unused}"


def test_every_listed_skip_is_still_in_the_docs():
    found = {(c.doc, c.text) for c in COMMANDS if c.problem}
    assert set(SKIPPED_COMMANDS) <= found, f"stale SKIPPED_COMMANDS entries: {set(SKIPPED_COMMANDS) - found}"


def test_the_extractor_reads_shell_as_the_shell_does():
    doc = "\n".join([
        "Inline: `make run ARGS=\"aggregator=krum 'aggregator.pre=[nnm]'\"` and `python -m launch.run",
        "--multirun lr=0.1,0.2`.",
        "",
        "```bash",
        "python -m launch.run aggregator=gm \\",
        "    \"attack='nan'\" seed=1   # a comment: python -m launch.run seed=2",
        "r() { name=$1; shift; python -m launch.run \"$@\" run.dir=runs/$name; }",
        "for s in 0 1 2; do for a in none \"foe attack.epsilon=10\"; do",
        "  r x_${a%% *}_$s attack=$a seed=$s; done; done",
        "BYZ_X=1 byz-run -m model=mlp,cnn && make test",
        "```",
    ])
    commands, calls = extract("x.md", doc)
    assert [(c.line, c.last) for c in commands] == [(1, 1), (1, 2), (5, 6), (9, 9), (10, 10)]
    assert [c.runs for c in commands[:3]] == [[["aggregator=krum", "aggregator.pre=[nnm]"]],
                                              [["--multirun", "lr=0.1,0.2"]],
                                              [["aggregator=gm", "attack='nan'", "seed=1"]]]
    assert commands[3].runs == [
        ["attack=none", "seed=0", "run.dir=runs/x_none_0"],
        ["attack=none", "seed=1", "run.dir=runs/x_none_1"],
        ["attack=none", "seed=2", "run.dir=runs/x_none_2"],
        ["attack=foe", "attack.epsilon=10", "seed=0", "run.dir=runs/x_foe_0"],
    ]
    assert commands[4].runs == [["-m", "model=mlp,cnn"]] and calls == {7: 4}
    assert not any(c.problem for c in commands)
    assert loose_mentions("x.md", doc, commands, calls, []) == (["x.md:6: " + doc.splitlines()[5].strip()], [])
    prose = doc + "\nTo train, type make run in a shell; `r() { python -m launch.run; }` is never called.\n"
    skip = ("x.md", "a comment: python", "a comment")
    assert loose_mentions("x.md", prose, *extract("x.md", prose), [skip]) == (
        ["x.md:12: " + prose.splitlines()[11], "x.md:12: " + prose.splitlines()[11]], [])
    assert [len(user_jobs(c)) for c in commands[4].runs] == [2]
    (bad,), _ = extract("y.md", "`python -m launch.run run.dir=$RUN_DIR`")
    assert bad.problem == "the shell variable $RUN_DIR is not defined in the docs"
    assert extract("z.md", "`python -m launch.run <overrides>`")[0][0].problem == "placeholder '<overrides>'"



@pytest.mark.parametrize("job", [
    ["experiment=paperA_table1_cpu", "aggregator=cc", "aggregator.tau=1", "lr=0.5", "hydra.sweep.dir=runs/x"],
    ["experiment=hgo_cpu", "algorithm=sgd", "hgo.tau=inf", "seed=2", "dataset.partition=iid"],
    ["aggregator=gm", "aggregator.pre=[nnm]", "+model.width=8", "filter.max_abs=null", "attack='nan'"],
])
def test_composition_in_two_steps_is_hydras(job):
    assert OmegaConf.to_yaml(composed(job)) == OmegaConf.to_yaml(compose(job))
    with pytest.raises(Exception, match="Could not override 'aggregator.taux'"):
        composed(["aggregator=cc", "aggregator.taux=1"])
