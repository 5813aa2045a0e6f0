"""Helpers shared by the tests, scripts/ and benchmarks/: real guests on a real libvirtd
(testbed), the exporter as a process (exporter_proc), a libvirtd that never answers
(silent_libvirtd), recorded sequences replayed (replay), the bundle's files and tools (bundle,
dashboard, derived, services) and operations driven and waited for (driving).

Installed into the project's venv beside the exporter; never part of the exporter's image."""
