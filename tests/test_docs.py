"""The commands the docs show: each `python -m convlstm_jax.…` line in a fenced code block of README.md or
docs/*.md names a module that exists, and is either run by a test (EXERCISED) or marked on its line as needing
what the suite cannot have (MARKERS), so that a command a user copies is one that was tried."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = (REPO_ROOT / 'README.md', *sorted((REPO_ROOT / 'docs').glob('*.md')))

# A comment on a command's line that says why no test runs it.
MARKERS = ('needs the 2021 artifacts', 'needs a GPU', 'needs several machines')

# The commands the suite runs: command key (see `command_key`) → the test that runs it, as
# 'tests/test_x.py::test_name'. A key is the module and the sorted flag names, without values, so that
# `main --config configs/two_layer.py:quick` and `main --config configs/one_layer.py` share one entry.
EXERCISED: dict[str, str] = {}

_COMMAND = re.compile(r'python3? -m (convlstm_jax(?:\.\w+)*)(.*)')
_FENCE = re.compile(r'^\s*(```|~~~)')


@dataclasses.dataclass(frozen=True)
class DocCommand:
    path: str  # the doc, relative to the repository
    line: int  # where the command starts
    module: str  # e.g. 'convlstm_jax.main'
    arguments: str  # what follows the module, without the comment
    comment: str  # the line's comment, '' if none

    @property
    def key(self) -> str:
        return command_key(self.module, self.arguments)

    @property
    def marked(self) -> bool:
        return any(marker in self.comment for marker in MARKERS)

    def __str__(self) -> str:
        return f'{self.path}:{self.line}: python -m {self.module}{self.arguments}'


def command_key(module: str, arguments: str) -> str:
    """'convlstm_jax.main --config --workdir': the module and its flag names (no values), sorted."""
    flags = sorted({word.split('=', 1)[0] for word in arguments.split() if word.startswith('-')})
    return ' '.join([module, *flags])


def _split_comment(line: str) -> tuple[str, str]:
    """('python -m x --a 1', 'needs a GPU') from 'python -m x --a 1  # needs a GPU'; a '#' inside a word
    (a URL's fragment, say) is no comment."""
    match = re.search(r'(^|\s)#', line)
    if match is None:
        return line.rstrip(), ''
    return line[: match.start()].rstrip(), line[match.end() :].strip()


def commands_in(text: str, path: str = '<text>') -> list[DocCommand]:
    """Every `python -m convlstm_jax.…` command in the fenced code blocks of a markdown text, with
    backslash-continued lines joined (a comment on any of the joined lines counts)."""
    found: list[DocCommand] = []
    in_block = False
    pending: list[tuple[str, str]] = []  # (code, comment) of the continued lines so far
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if _FENCE.match(raw):
            in_block, pending = not in_block, []
            continue
        if not in_block:
            continue
        code, comment = _split_comment(raw)
        if not pending:
            start = number
        continues = code.endswith('\\')
        pending.append((code[:-1].rstrip() if continues else code, comment))
        if continues:
            continue
        joined = ' '.join(part.strip() for part, _ in pending)
        comments = ' '.join(part for _, part in pending if part)
        pending = []
        for match in _COMMAND.finditer(joined):
            arguments = re.split(r'\s(?:&&|\|\||;|\|)\s', match.group(2))[0].rstrip()
            found.append(DocCommand(path, start, match.group(1), arguments, comments))
    return found


def doc_commands() -> list[DocCommand]:
    return [
        command
        for doc in DOC_FILES
        for command in commands_in(doc.read_text(encoding='utf-8'), str(doc.relative_to(REPO_ROOT)))
    ]


def module_runs(module: str) -> bool:
    """Whether `python -m module` has something to run: the module, or a package's __main__."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a parent package is missing
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f'{module}.__main__') is not None
    return True


def test_found_in_fenced_blocks_with_continuations_and_markers():
    text = '\n'.join(
        [
            'Prose: `python -m convlstm_jax.prose --x` is not in a block.',
            '```bash',
            'pip install -e . && python -m convlstm_jax.main --config c.py:quick && echo done',
            'python -m convlstm_jax.evaluate --reference REF \\',
            '    --out runs/eval  # needs the 2021 artifacts',
            'CONVLSTM_CPU_DEVICES=2 python3 -m convlstm_jax.predict --checkpoint=runs/x --video a#b.mp4',
            '```',
            'python -m convlstm_jax.outside --y',
        ]
    )
    commands = commands_in(text)
    assert [(c.line, c.key, c.marked) for c in commands] == [
        (3, 'convlstm_jax.main --config', False),
        (4, 'convlstm_jax.evaluate --out --reference', True),
        (6, 'convlstm_jax.predict --checkpoint --video', False),
    ]
    assert commands[2].arguments == ' --checkpoint=runs/x --video a#b.mp4'


def test_module_check_can_fail():
    assert module_runs('convlstm_jax.main')
    assert not module_runs('convlstm_jax.no_such_module')
    assert not module_runs('convlstm_jax.no_such_package.main')
    assert not module_runs('convlstm_jax')  # a package without __main__ does not run


def test_the_docs_show_commands():
    keys = {command.key for command in doc_commands()}
    assert 'convlstm_jax.main --config' in keys, sorted(keys)


def test_every_command_names_a_module_that_runs():
    missing = [str(command) for command in doc_commands() if not module_runs(command.module)]
    assert not missing, 'no such module:\n' + '\n'.join(missing)


def test_exercised_entries_name_a_documented_command_and_an_existing_test():
    documented = {command.key for command in doc_commands()}
    problems = []
    for key, test in EXERCISED.items():
        if key not in documented:
            problems.append(f'{key}: no doc shows this command any more')
        file, _, name = test.partition('::')
        path = REPO_ROOT / file
        if not name or not path.is_file():
            problems.append(f'{key}: {test} is not tests/FILE.py::TEST')
        elif not re.search(rf'^\s*(?:async\s+)?def {re.escape(name)}\(', path.read_text(), re.MULTILINE):
            problems.append(f'{key}: {file} has no test {name}')
    assert not problems, '\n'.join(problems)


@pytest.mark.xfail(strict=False, reason='EXERCISED is not filled in yet: the tests that run each command')
def test_every_command_is_exercised_or_marked():
    untested = [
        f'{command}    [key: {command.key}]'
        for command in doc_commands()
        if command.key not in EXERCISED and not command.marked
    ]
    excuses = ' / '.join(f'# {marker}' for marker in MARKERS)
    assert not untested, f'commands that no test runs and no "{excuses}" excuses:\n' + '\n'.join(untested)
