"""Where a Dagster run's time went, from the instance's event log.

    DAGSTER_HOME=.data/dagster .venv/bin/python -m orchestration.lib.timings [RUN_ID]

Prints the run's wall time (run start to end), each step's time, the gaps between them, and what
the dbt step logged about itself (`dbt timings: {...}`: dbt's own elapsed time, the time outside
dbt, the models' and tests' summed times, the slowest nodes). Without RUN_ID, the newest run.
`make bench-growth` prints the same for the hourly run it times.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import dagster as dg

DBT_TIMINGS_PREFIX = "dbt timings: "


def run_timings(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    starts: dict[str, float] = {}
    steps: dict[str, float] = {}
    run_start = run_end = None
    dbt: dict[str, Any] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            if entry.user_message.startswith(DBT_TIMINGS_PREFIX):
                dbt = json.loads(entry.user_message[len(DBT_TIMINGS_PREFIX) :])
            continue
        kind = event.event_type
        if kind == dg.DagsterEventType.RUN_START:
            run_start = entry.timestamp
        elif kind in (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE):
            run_end = entry.timestamp
        elif kind == dg.DagsterEventType.STEP_START and entry.step_key:
            starts[entry.step_key] = entry.timestamp
        elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) and entry.step_key:
            steps[entry.step_key] = round(entry.timestamp - starts[entry.step_key], 2)
    run_s = round(run_end - run_start, 2) if run_start is not None and run_end is not None else None
    return {
        "run_s": run_s,
        "steps_s": steps,
        "outside_steps_s": round(run_s - sum(steps.values()), 2) if run_s is not None else None,
        "dbt": dbt,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with dg.DagsterInstance.get() as instance:
        if args:
            run_id = args[0]
        else:
            runs = instance.get_runs(limit=1)
            if not runs:
                print("no runs in this instance ($DAGSTER_HOME)", file=sys.stderr)
                return 1
            run_id = runs[0].run_id
        timings = run_timings(instance, run_id)
    print(f"run {run_id}: {timings['run_s']} s (outside the steps: {timings['outside_steps_s']} s)")
    for step, seconds in sorted(timings["steps_s"].items(), key=lambda item: -item[1]):
        print(f"  step {step:<40} {seconds:>8.2f} s")
    for key, value in timings["dbt"].items():
        print(f"  dbt {key:<41} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
