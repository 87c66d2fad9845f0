"""Sweeps: one training run per point of a sweep file, on this machine or a cluster.

  points.py     a sweep file's points, checked against the base config, with their workdirs
                and trainer flags; the plan file WORKDIR_ROOT/sweep.json
  launchers.py  running the points here, as one SLURM array, or as one GKE JobSet each
  summary.py    a table of every point's final and best metrics from its metrics.jsonl

The command line is launch/sweep.py; docs/cluster.md ("Sweeps") walks through it.
"""
