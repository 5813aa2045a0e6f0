"""`libvirt-snapshot-exporter bench DOMAIN`: the hand-run snapshot study as one command.

command is its entry point, run does the study's operations and leaves the domain as
found, checks refuses what it must not touch, settings lists what is compared,
control is its read-write libvirt adapter, cache_mode changes a domain's cache mode and puts
it back, found checks it is left as found, recording traces and judges each operation with the
exporter's flight recorder and verdict, report, comparison and plot write the results, console
handles Ctrl-C and the progress line. Host, QEMU, guest and version figures come from the
exporter's own modules, so a bench run and the exporter agree field by field.
"""
