"""The commands the docs show: each `python -m convlstm_jax.…` line in a fenced code block of README.md or
docs/*.md names a module that exists, and is either run by a test (EXERCISED), marked on its line as needing
what the suite cannot have (MARKERS), or, too long for the suite, names the existing test that runs its
tiny-shape twin (TWIN), so that a command a user copies is one that was tried."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = (REPO_ROOT / 'README.md', *sorted((REPO_ROOT / 'docs').glob('*.md')))

# A comment on a command's line that says why no test runs it.
MARKERS = ('needs the 2021 artifacts', 'needs a GPU', 'needs several machines')
# A command too long for the suite (the 2021 shape, every framework, for minutes) names the test that runs its
# tiny-shape twin: the same module and options at a few frames, and that test must exist.
TWIN = re.compile(r'(?:full size|minutes long): its tiny-shape twin is (\S+)')

# The commands the suite runs: command key (see `command_key`) → the test that runs it, as
# 'tests/test_x.py::test_name'. A key is the module and the sorted flag names, without values, so that
# `main --config configs/two_layer.py:quick` and `main --config configs/one_layer.py` share one entry. The
# test runs the module with every flag of the key; it may add flags that keep the run small and inside
# tmp_path (a `:smoke` config, a data_dir, a batch size, fewer resamples) or that it checks as well.
EXERCISED: dict[str, str] = {
    'convlstm_jax.main --config': 'tests/test_main.py::test_default_workdir_and_one_device_per_core',
    'convlstm_jax.main --config --config.* --workdir': 'tests/test_main.py::test_smoke_run_end_to_end',
    'convlstm_jax.main --config --print_config': (
        'tests/test_main.py::test_print_config_shows_every_field_with_the_overrides'
    ),
    'convlstm_jax.main --help': 'tests/test_main.py::test_help_exits_0_and_lists_the_options',
    'convlstm_jax.data.prepare --config.*': 'tests/test_sources.py::test_prepare_command',
    'convlstm_jax.data.prepare --config --tfds': (
        'tests/test_sources.py::test_prepare_command_with_a_config_file_and_tfds'
    ),
    'convlstm_jax.data.prepare --list': 'tests/test_sources.py::test_prepare_command',
    'convlstm_jax.data.prepare --clear': 'tests/test_sources.py::test_prepare_command',
    'convlstm_jax.data.tank_video --out --seconds': (
        'tests/test_tank_video.py::test_the_documented_command_writes_the_2021_frame_size'
    ),
    'convlstm_jax.data.tank_video --out --seconds --seed': (
        'tests/test_tank_video.py::test_the_documented_command_writes_the_2021_frame_size'
    ),
    'convlstm_jax.evaluate --checkpoint --out --split': 'tests/test_evaluate.py::test_model_mode_report',
    'convlstm_jax.evaluate --checkpoint --member --num_resamples --out --split': (
        'tests/test_member_commands.py::test_evaluate_reports_the_member'
    ),
    'convlstm_jax.evaluate --checkpoint --config.* --member --num_resamples --out --split': (
        'tests/test_member_commands.py::test_evaluate_reports_the_member'
    ),
    'convlstm_jax.predict --checkpoint --out --plot --video': (
        'tests/test_predict.py::test_video_cli_matches_the_same_clips_as_an_array'
    ),
    'convlstm_jax.predict --checkpoint --frames --out': (
        'tests/test_predict.py::test_frames_folder_equals_video'
    ),
    'convlstm_jax.predict --batch_size --checkpoint --frames --out': (
        'tests/test_predict.py::test_frames_folder_equals_video'
    ),
    'convlstm_jax.keras_io --out': 'tests/test_keras_io.py::test_keras3_archive_round_trip',
    'convlstm_jax.keras_io --config --out': 'tests/test_keras_io.py::test_keras3_weights_need_and_use_config',
    'convlstm_jax.visualize --checkpoint --out --split --t': (
        'tests/test_visualize.py::test_cli_draws_a_clip_and_refuses_bad_frames'
    ),
    'convlstm_jax.visualize --channels --checkpoint --out --split --t': (
        'tests/test_visualize.py::test_cli_draws_a_clip_and_refuses_bad_frames'
    ),
}

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
        return any(marker in self.comment for marker in MARKERS) or self.twin is not None

    @property
    def twin(self) -> str | None:
        """The test its line names as its tiny-shape twin, if any."""
        match = TWIN.search(self.comment)
        return match.group(1) if match else None

    def __str__(self) -> str:
        return f'{self.path}:{self.line}: python -m {self.module}{self.arguments}'


def command_key(module: str, arguments: str) -> str:
    """'convlstm_jax.main --config --config.* --workdir': the module and its flag names (no values), sorted,
    with every `--config.<field>` override one token `--config.*`: which fields a doc overrides is an
    example, not another command."""
    flags = sorted({_flag_name(word) for word in arguments.split() if word.startswith('-')})
    return ' '.join([module, *flags])


def _flag_name(word: str) -> str:
    name = word.split('=', 1)[0]
    return '--config.*' if name.startswith('--config.') else name


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
            'python -m convlstm_jax.main --config c.py --config.l2=0 --workdir w --config.data.path=a',
            'python -m convlstm_jax.main --config c.py --workdir w --config.batch_size 8',
            '```',
            'python -m convlstm_jax.outside --y',
        ]
    )
    commands = commands_in(text)
    assert [(c.line, c.key, c.marked) for c in commands] == [
        (3, 'convlstm_jax.main --config', False),
        (4, 'convlstm_jax.evaluate --out --reference', True),
        (6, 'convlstm_jax.predict --checkpoint --video', False),
        (7, 'convlstm_jax.main --config --config.* --workdir', False),
        (8, 'convlstm_jax.main --config --config.* --workdir', False),  # other overrides, the same key
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


def missing_test(test: str) -> str | None:
    """Why 'tests/test_x.py::test_name' names no test of the suite, or None where it does."""
    file, _, name = test.partition('::')
    path = REPO_ROOT / file
    if not name or not file.startswith('tests/') or not path.is_file():
        return f'{test} is not tests/FILE.py::TEST'
    if not re.search(rf'^\s*(?:async\s+)?def {re.escape(name)}\(', path.read_text(), re.MULTILINE):
        return f'{file} has no test {name}'
    return None


def unexcused(commands: list[DocCommand], exercised: dict[str, str]) -> list[str]:
    """The commands that no test runs and that no marker on their line excuses."""
    return [f'{c}    [key: {c.key}]' for c in commands if c.key not in exercised and not c.marked]


def test_missing_test_and_unexcused_can_fail():
    assert missing_test('tests/test_docs.py::test_module_check_can_fail') is None
    assert (
        missing_test('tests/test_docs.py::test_no_such_test')
        == 'tests/test_docs.py has no test test_no_such_test'
    )
    assert 'is not tests/FILE.py::TEST' in missing_test('tests/test_docs.py')
    assert 'is not tests/FILE.py::TEST' in missing_test('tests/test_nowhere.py::test_x')
    text = '\n'.join(
        [
            '```',
            'python -m convlstm_jax.main --config c.py',
            'python -m convlstm_jax.main --help  # needs a GPU',
            'python -m convlstm_jax.benchmark --json b  # full size: its tiny-shape twin is tests/t.py::t',
            'python -m convlstm_jax.predict --checkpoint c  # a comment that excuses nothing',
            'python -m convlstm_jax.visualize --t 5  # its tiny-shape twin is tests/t.py::t (no reason)',
            '```',
        ]
    )
    commands = commands_in(text)
    assert [c.twin for c in commands] == [None, None, 'tests/t.py::t', None, None]
    assert [line.split(':')[1] for line in unexcused(commands, {})] == ['2', '5', '6']
    exercised = {'convlstm_jax.main --config': 'tests/test_main.py::test_smoke_run_end_to_end'}
    assert [line.split(':')[1] for line in unexcused(commands, exercised)] == ['5', '6']


def test_exercised_entries_name_a_documented_command_and_an_existing_test():
    documented = {command.key for command in doc_commands()}
    problems = []
    for key, test in EXERCISED.items():
        if key not in documented:
            problems.append(f'{key}: no doc shows this command any more')
        if (problem := missing_test(test)) is not None:
            problems.append(f'{key}: {problem}')
    assert not problems, '\n'.join(problems)


def test_every_named_tiny_shape_twin_exists():
    twins = [(command, command.twin) for command in doc_commands() if command.twin is not None]
    assert twins, 'docs/benchmark.md names the tiny-shape twins of its full-size commands'
    problems = [f'{command}: {problem}' for command, twin in twins if (problem := missing_test(twin))]
    assert not problems, '\n'.join(problems)


def test_every_command_is_exercised_or_marked():
    untested = unexcused(doc_commands(), EXERCISED)
    excuses = ' / '.join(f'# {marker}' for marker in MARKERS)
    assert not untested, (
        f'commands that no test runs and no "{excuses}" or "# full size: its tiny-shape twin is '
        'tests/test_x.py::test_name" excuses:\n' + '\n'.join(untested)
    )
