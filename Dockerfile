# Gantry's container image: the release binary and the few C libraries it links, on an empty
# base (no shell, no package manager), running as an unprivileged user.
#
# No registry is needed: the binary is built on the host first, then staged and copied in:
#
#   cargo build --release --locked
#   docker/build-image.sh            # stages docker/rootfs (binary, libs, passwd) and builds gantry:latest
#
# The build context is the staging folder that docker/build-image.sh makes, not the repository.
FROM scratch
COPY rootfs/ /

# 65532: "nonroot". To follow Docker it needs the socket's group (compose: group_add with the
# socket's gid), which is how the socket "permits" it; see docs/docker.md.
USER 65532:65532

# The proxy's entrypoint (plain HTTP; 8443 for a TLS entrypoint in a config file). The admin API
# stays on 127.0.0.1:8081 inside the container: not reachable from outside unless you say so.
EXPOSE 8080 8443

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/gantry", "probe", "http://127.0.0.1:8081/healthz"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/gantry"]
CMD ["run", "--docker", "--docker-address", "ip", "--listen", "0.0.0.0:8080"]
