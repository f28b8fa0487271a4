"""Event fan-out: a typed facade over a bytes-level backend chosen by URL scheme."""
