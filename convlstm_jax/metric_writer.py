"""Where training metrics go: `metrics.jsonl` and TensorBoard event files, written by process 0 only.

The event files are written by tensorboardX, which needs neither TensorFlow nor the `tensorboard` package;
`tensorboard --logdir WORKDIR/tensorboard` (or a folder of workdirs) shows them.
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
        self._events = tensorboardX.FileWriter(str(workdir / workdir_layout.TENSORBOARD_DIR))
        self._summary_type = tensorboardX.proto.summary_pb2.Summary

    def write(self, record: dict[str, Any]) -> None:
        """`record` has 'step' and 'split'; other numbers become TensorBoard scalars named 'split/key'."""
        if not self._enabled:
            return
        record = {key: io.jsonable(value) for key, value in record.items()}
        self._jsonl.write(json.dumps(record) + '\n')
        self._jsonl.flush()
        values = [
            self._summary_type.Value(tag=f'{record["split"]}/{key}', simple_value=float(value))
            for key, value in record.items()
            if key not in ('step', 'split')
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ]
        if values:  # one event per record, as a step's scalars belong together
            self._events.add_summary(self._summary_type(value=values), global_step=int(record['step']))
            self._events.flush()

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._events.close()
