"""Where training metrics go: `metrics.jsonl` and TensorBoard event files, written by process 0 only.

The event files are written by tensorboardX, which needs neither TensorFlow nor the `tensorboard` package;
`tensorboard --logdir WORKDIR/tensorboard` (or a folder of workdirs) shows them. A population's rows carry
'member', and each member's scalars go to `tensorboard/member_<i>/`, so that TensorBoard draws the members as
runs on the same charts.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from convlstm_jax import io
from convlstm_jax import workdir as workdir_layout


class MetricWriter:
    """Appends one JSON object per record to `metrics.jsonl` and its numbers to a TensorBoard event file."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
        self._enabled = enabled
        if not enabled:
            return
        import tensorboardX  # here: importing it costs ~1 s, and only process 0 writes

        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / workdir_layout.METRICS_JSONL, 'a')  # noqa: SIM115 (closed in close())
        self._file_writer = tensorboardX.FileWriter
        self._events_dir = workdir / workdir_layout.TENSORBOARD_DIR
        self._events: dict[int | None, Any] = {}  # member (None: a solo run's) → its event file
        self._summary_type = tensorboardX.proto.summary_pb2.Summary

    def write(self, record: dict[str, Any]) -> None:
        """`record` has 'step' and 'split' (and 'member' in a population); other numbers become TensorBoard
        scalars named 'split/key'."""
        if not self._enabled:
            return
        record = {key: io.jsonable(value) for key, value in record.items()}
        self._jsonl.write(json.dumps(record) + '\n')
        self._jsonl.flush()
        values = [
            self._summary_type.Value(tag=f'{record["split"]}/{key}', simple_value=float(value))
            for key, value in record.items()
            if key not in ('step', 'split', 'member')
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ]
        if values:  # one event per record, as a step's scalars belong together
            events = self._events_of(record.get('member'))
            events.add_summary(self._summary_type(value=values), global_step=int(record['step']))
            events.flush()

    def _events_of(self, member: int | None):
        if member not in self._events:
            folder = self._events_dir if member is None else self._events_dir / f'member_{member}'
            self._events[member] = self._file_writer(str(folder))
        return self._events[member]

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            for events in self._events.values():
                events.close()
