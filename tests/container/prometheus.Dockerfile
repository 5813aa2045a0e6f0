# Prometheus and Alertmanager from Debian's packages, in one image, standing in for
# prom/prometheus and prom/alertmanager in the container tests (tests/container/compose.debian.yml):
# no registry is reachable on the build machines, so those images cannot be pulled.
#
# Built on the exporter's base (scripts/container-base.sh: Debian bookworm from mmdebstrap), so
# its layers are already there. It mimics what docker-compose.yml relies on in the upstream
# images: the binaries at /bin/prometheus and /bin/alertmanager, wget for the healthchecks,
# /prometheus and /alertmanager owned by nobody, who runs them.
#
# Debian's Prometheus is 2.42 (bookworm): /bin/prometheus adds
# --enable-feature=expand-external-labels, so that the external label hypervisor is expanded
# from the environment as Prometheus 3.x always does (prometheus/prometheus.yml).

ARG BASE_IMAGE=localhost/lse-python-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      prometheus=2.42.* \
      prometheus-alertmanager=0.25.* \
      wget=1.21.* \
 && rm -rf /var/lib/apt/lists/* \
 && dpkg-divert --quiet --local --rename --divert /usr/bin/prometheus.debian --add /usr/bin/prometheus \
 && printf '#!/bin/sh\nexec /usr/bin/prometheus.debian --enable-feature=expand-external-labels "$@"\n' \
      >/usr/bin/prometheus \
 && chmod 0755 /usr/bin/prometheus \
 && ln -s prometheus-alertmanager /usr/bin/alertmanager \
 && install -d -o nobody -g nogroup /prometheus /alertmanager
# nobody:nogroup, as in prom/prometheus and prom/alertmanager.
USER 65534:65534
# The prometheus service sets its own entrypoint (docker-compose.yml); this is the one
# prom/alertmanager has, which the alertmanager service uses.
ENTRYPOINT ["/bin/alertmanager"]
