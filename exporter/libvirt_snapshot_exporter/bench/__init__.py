"""`libvirt-snapshot-exporter bench DOMAIN`: the hand-run snapshot study as one command.

command runs it, checks refuses what it must not touch, control is its read-write libvirt
adapter, sampler watches the host and QEMU as the exporter does, report and plot write the
results, console handles Ctrl-C and the progress line. Host, QEMU, guest and version figures
come from the exporter's own modules, so a bench run and the exporter agree field by field.
"""
