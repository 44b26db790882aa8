# reportd's container image: a Rust builder stage and a small Debian runtime.
#
#   docker build -t reportd .
#   docker run -p 8000:8000 -v reportd-data:/data reportd
#
# No build step downloads anything but crates: the runtime stage installs no
# package (the CA bundle comes from the builder image), and the base images
# are the only other things pulled.

# ---- builder: compiles the release binary ------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The manifest, the lock file and everything compiled into the binary: the
# SQL migrations (sqlx::migrate!), the built-in prompts (include_str!) and
# the web console's files (rust-embed).
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY migrations ./migrations
COPY prompts ./prompts
COPY console ./console

# --locked: build exactly the dependency versions of Cargo.lock. The cache
# mounts keep the crate registry and the target directory between builds, so
# a code change recompiles reportd alone; the binary is copied out of the
# cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin reportd \
    && install -D -m 0755 target/release/reportd /out/reportd \
    && mkdir -p /out/data

# ---- runtime: the binary, a CA bundle and an unprivileged user --------------
FROM debian:bookworm-slim AS runtime

# The LLM client verifies TLS against the system's roots (rustls platform
# verifier): the builder image has Debian's bundle, so it is copied rather
# than installed (nothing is downloaded here).
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

# A fixed uid/gid, so that a volume prepared on the host can be chowned to it.
RUN groupadd --system --gid 10001 reportd \
    && useradd --system --uid 10001 --gid reportd --home-dir /data --no-create-home --shell /usr/sbin/nologin reportd

# The parse worker is this same binary (reportd re-executes itself to parse
# each upload in an isolated child process): nothing else is needed.
COPY --from=builder /out/reportd /usr/local/bin/reportd
# /data belongs to the service user; a named volume mounted there starts as
# a copy of it, with the same owner.
COPY --from=builder --chown=10001:10001 /out/data /data

# Defaults that work in the container: listen on every interface, keep the
# SQLite file (dev) and the generated dev secret on the /data volume.
# docker-compose.yml overrides DATABASE_URL with PostgreSQL for prod.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/data \
    DATABASE_URL=sqlite:///data/reportd.db \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

USER reportd:reportd
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000

# `reportd healthcheck` sends GET /healthz to HOST:PORT and exits 0 on 200:
# no curl or wget in the image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["reportd", "healthcheck"]

# On SIGTERM reportd stops accepting, finishes its requests and hands its
# running imports back within SHUTDOWN_GRACE_SECONDS (30 s by default):
# `docker stop` must wait at least that long (stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["reportd"]
CMD ["serve"]
