"""Run by test_crash: opens a trajectory, records a step, says so, then waits to be killed."""

import sys
import time

import trainsvc_trajectories as tt

rec = tt.TrajectoryRecorder(sys.argv[1], commit=sys.argv[2])
t = rec.start_trajectory("crasher", window_id="w", scenario_id="s")
rec.start_step(t, {"n": 1})
rec.complete_step(t, "a", 1.0)
rec.start_step(t, {"n": 2})  # left open: killed mid-step
rec.flush()
print(t.id, flush=True)
time.sleep(600)
