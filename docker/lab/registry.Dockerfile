# Stand-in for registry:2 (Distribution), from Debian's docker-registry package. Configured
# through REGISTRY_* environment variables exactly as the upstream image is.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends docker-registry \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/registry
EXPOSE 5000
ENTRYPOINT ["docker-registry"]
CMD ["serve", "/etc/docker/registry/config.yml"]
