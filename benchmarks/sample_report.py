"""The `limit` column and the table of benchmarks/sample.py: which share of a sampler row's
time is largest (compute floor, weight floor, forward above floors, the sampler between
forwards; with a profile, which kernels), and the table printed at the end of a run."""
from typing import Optional


# What the profile's largest share is called in the `limit` column.
PROFILE_LIMITS = {"matmul": "small matmuls", "attention": "attention",
                  "fusion/elementwise": "elementwise kernels", "copy/transpose": "copies",
                  "collective": "collectives", "other": "other kernels",
                  "gaps": "kernel launches (idle gaps)"}


def profile_limit(profile: dict) -> str:
  """The largest share of a profiled call (`profile_calls`): a kernel category, or the idle
  gaps between kernels; as a percentage of the latency."""
  shares = dict(profile["by_category_ms"])
  shares["gaps"] = max(profile["latency_ms"] - profile["busy_ms"], 0.0)
  name, ms = max(shares.items(), key=lambda kv: kv[1])
  return f"{PROFILE_LIMITS.get(name, name)} {100 * ms / profile['latency_ms']:.0f}% of the call"


def attribute(row, base_loop_s: Optional[float]):
  """Sampler overhead = this stage's loop - steps x forward, and the limit it implies.

  Cascade rows hold the base loop too: pass the base-only row's loop time of the same batch
  (None when that row did not run: the overhead is then unknown).
  """
  row["sampler_s"] = (None if base_loop_s is None else
                      max(row["loop_s"] - base_loop_s - row["steps"] * row["forward_s"], 0.0))
  row["limit"] = name_limit(row)


def name_limit(row) -> str:
  """The largest share of one step: compute floor, weight floor, kernel overhead, sampler."""
  steps, fwd = row["steps"], row["forward_s"]
  compute, weights = row["compute_floor_s"] or 0.0, row["weight_floor_s"] or 0.0
  floor = max(compute, weights)
  sampler = row["sampler_s"] or 0.0
  if not (compute or weights):  # CPU or unknown device: only overhead vs model is known
    return ("sampler between forwards" if sampler > fwd * steps else
            "model forwards (floors unknown)")
  shares = {
      "compute": compute * steps,
      "HBM weights": weights * steps if weights > compute else 0.0,
      # Forward time above both floors: small, inefficient kernels and launch gaps (tell
      # them apart with --profile, which sums kernel time against the latency).
      "forward above floors": max(fwd - floor, 0.0) * steps,
      "sampler between forwards": sampler,
  }
  total = sum(shares.values()) or 1.0
  name, value = max(shares.items(), key=lambda kv: kv[1])
  label = f"{name} ({100 * value / total:.0f}%)"
  if name == "forward above floors" and row.get("profile"):
    label += ": " + profile_limit(row["profile"])  # which kernels (--profile)
  return label


def fmt_ms(s) -> str:
  return "n/a" if s is None else f"{1e3 * s:.1f}"


def print_table(rows, device):
  cols = [("row", lambda r: r["name"]), ("batch", lambda r: str(r["batch"])),
          ("px", lambda r: str(r["size"])), ("params", lambda r: f"{r['params'] / 1e6:.1f}M"),
          ("compile s", lambda r: f"{r['compile_s']:.1f}"),
          ("latency ms", lambda r: fmt_ms(r["latency_s"])),
          ("img/s", lambda r: f"{r['images_per_s']:.2f}"),
          ("vq ms", lambda r: fmt_ms(r["vq_s"])),
          ("steps x fwd ms", lambda r: f"{r['steps']} x {fmt_ms(r['forward_s'])}"),
          ("sampler ms", lambda r: fmt_ms(r["sampler_s"])),
          ("floor comp/HBM ms", lambda r: f"{fmt_ms(_times(r, 'compute_floor_s'))} / "
                                          f"{fmt_ms(_times(r, 'weight_floor_s'))}"),
          ("limit", lambda r: r["limit"])]
  table = [[h for h, _ in cols]] + [[f(r) for _, f in cols] for r in rows]
  widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
  print(f"\ndevice: {device}")
  for i, line in enumerate(table):
    print("  ".join(v.ljust(w) for v, w in zip(line, widths)))
    if i == 0:
      print("  ".join("-" * w for w in widths))
  print("latency: whole jitted sampler (median); amused: transformer loop only (vq ms beside)."
        "\nsteps x fwd: one guided forward (2B rows) of the last transformer stage; floors are"
        " for those steps.")


def _times(r, key):
  v = r[key]
  return None if v is None else v * r["steps"]
