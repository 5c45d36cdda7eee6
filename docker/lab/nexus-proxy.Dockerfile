# The lab's Nexus look-alike (`cargo xtask sandbox up --nexus`): nexus-proxy.py, a stdlib-only
# Python program, in front of the lab registry. It needs nothing but Python 3, so it builds on
# the upstream Python image, or on the lab's stand-in for it passed as PYTHON_IMAGE.
ARG PYTHON_IMAGE=python:3.10-slim-bullseye
FROM ${PYTHON_IMAGE}
COPY nexus-proxy.py /usr/local/bin/nexus-proxy.py
# Nothing to write and no privileged port: the proxy runs as the unprivileged user every Debian
# image has.
USER nobody
EXPOSE 5001
ENTRYPOINT ["python3", "-u", "/usr/local/bin/nexus-proxy.py"]
