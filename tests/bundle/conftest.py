"""The bundle tests' helpers live in lse_devtools.bundle; tests/bundle/test_live_prometheus.py
(another engineer's file) still imports these names from here."""

from lse_devtools.bundle import PROM, alerting_rules, load_yaml, recording_rules, tool

__all__ = ["PROM", "alerting_rules", "load_yaml", "recording_rules", "tool"]
