import json
import math
import os

import numpy as np
import pytest

from convlstm_jax import io, progress


def test_write_json_is_strict_and_plain(tmp_path):
    path = tmp_path / 'sub' / 'a.json'
    io.write_json(
        path, {'b': np.float32(0.5), 'a': [np.int64(3), math.nan], 'c': np.arange(2)}, sort_keys=True
    )
    text = path.read_text()
    assert json.loads(text) == {'a': [3, None], 'b': 0.5, 'c': [0, 1]}
    assert text.index('"a"') < text.index('"b"')
    assert io.read_json(path)['b'] == 0.5
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / 'a.txt'
    io.write_text(path, 'old')

    def fail(f):
        f.write(b'half')
        raise RuntimeError('disk full')

    with pytest.raises(RuntimeError):
        io.write_atomic(path, fail)
    assert path.read_text() == 'old'
    assert [p.name for p in tmp_path.iterdir()] == ['a.txt']  # no temporary file left behind


def test_progress_bar_in_a_log_file_prints_at_most_every_30_s(tmp_path):
    with open(tmp_path / 'log', 'w') as log:
        bar = progress.bar(total=1000, file=log)
        assert bar.mininterval == progress.LOG_INTERVAL_S
        for _ in range(1000):
            bar.update(1)
        bar.close()
    assert (tmp_path / 'log').read_text().count('\r') + (tmp_path / 'log').read_text().count('\n') <= 3
