"""libvirt-snapshot-exporter: times libvirt snapshot operations beside host memory."""

__version__ = "0.1.0"
