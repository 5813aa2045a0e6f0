"""Helpers shared by the tests, scripts/ and benchmarks/: real guests on a real libvirtd
(testbed), the exporter as a process (exporter_proc), a libvirtd that never answers
(silent_libvirtd), recorded sequences replayed (replay), the bundle's files and tools (bundle,
dashboard, derived, services), operations driven and waited for (driving), and slow storage
(slow_storage over the rate-limited FUSE filesystem ratefs) with the stressors that make a
snapshot slow on it (stressors).

Installed into the project's venv beside the exporter; never part of the exporter's image."""
