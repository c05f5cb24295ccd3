# Release image: build the one binary without the dev doubles (`--no-default-features`),
# run it as an unprivileged user on a slim base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
RUN cargo build --release --locked --no-default-features --bin samvault

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/samvault --create-home samvault
COPY --from=build /src/target/release/samvault /usr/local/bin/samvault
USER samvault
WORKDIR /var/lib/samvault
ENV SAMVAULT_LISTEN=0.0.0.0:8080 \
    SAMVAULT_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["samvault"]
CMD ["serve"]
