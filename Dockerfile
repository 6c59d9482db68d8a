# smtp2oauth container image.
#
#   docker build -t smtp2oauth:latest .                  (with legacy-tls, as the release image)
#   docker build --build-arg FEATURES= -t smtp2oauth:rustls .      (no OpenSSL: 5 MB smaller)
#   docker compose -f deploy/docker-compose.yml up -d        (see docs/deploy.md)
#
# Three stages:
#   build   compiles the release binary (glibc, dynamically linked; TLS roots are compiled in),
#           with the cargo features in FEATURES (legacy-tls adds OpenSSL for TLS 1.0 listeners);
#   rootfs  runs deploy/assemble-rootfs.sh: the binary, the shared libraries ldd lists, a passwd
#           entry for uid/gid 65532, nsswitch.conf, /data owned by 65532, /etc/smtp2oauth, /tmp;
#   final   FROM scratch with that tree and nothing else (about 22 MB, 17 MB without OpenSSL).
#
# Without a Docker engine or registry access, deploy/build-image.sh builds the same final stage
# with buildah from a locally built binary. The two must stay in step: tests/e2e/deploy.rs checks
# that the final stage below and build-image.sh's configuration agree.
#
# Uses BuildKit cache mounts (the default builder of current Docker and of buildah/podman).

FROM rust:1.95-bookworm AS build
# Cargo features of the binary. legacy-tls (the rust image has libssl-dev and pkg-config) lets a
# listener serve TLS 1.0 to old devices without rebuilding; "" builds rustls only.
ARG FEATURES="legacy-tls"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p smtp2oauth ${FEATURES:+--features "$FEATURES"} \
 && install -D -m 0755 target/release/smtp2oauth /out/smtp2oauth

FROM build AS rootfs
# Timestamps of every file in the image (reproducible layers); BuildKit passes its own if set.
ARG SOURCE_DATE_EPOCH=0
RUN bash deploy/assemble-rootfs.sh /out/smtp2oauth /rootfs

FROM scratch
# COPY --from keeps owners: /data stays 65532:65532, everything else root.
COPY --from=rootfs /rootfs/ /
USER 65532:65532
WORKDIR /data
# 2525: SMTP with STARTTLS offered; 4650: implicit TLS ("SSL"); 8025: admin HTTP (/healthz,
# /readyz, /metrics): publish it on 127.0.0.1 only.
EXPOSE 2525 4650 8025
# The store: spool, captured messages, the generated self-signed TLS key (<store>/tls).
VOLUME /data
# The environment overrides the configuration file: the store is always the volume, and the admin
# server listens on every interface of the container so the healthcheck and Prometheus reach it.
ENV SMTP2OAUTH_STORE__DIR=/data \
    SMTP2OAUTH_ADMIN__LISTEN=0.0.0.0:8025
# `smtp2oauth health` GETs /healthz on the admin address (0.0.0.0 is contacted on 127.0.0.1) and
# exits 0 on 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/smtp2oauth", "health"]
# SIGTERM: stop accepting, give open sessions 20 s and deliveries in progress [delivery]
# shutdown_timeout (30 s), so allow 60 s (docker stop -t 60, compose stop_grace_period); anything
# cut off stays in the spool and resumes at the next start. The relay is PID 1 and handles
# SIGTERM itself (exec form below: no shell in between).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/smtp2oauth"]
# Reads /etc/smtp2oauth/smtp2oauth.toml when it exists, otherwise the environment alone.
CMD ["serve"]
