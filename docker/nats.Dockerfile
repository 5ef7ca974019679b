# shardline nats: the pinned static nats-server (the same binary `make run` uses) with
# JetStream; store in /data, config /etc/nats/nats.conf (docker/nats/nats.conf).
# FROM scratch: no base image is pulled. Build context: target/docker/nats
# (docker/build-images.sh).
FROM scratch
ARG VERSION=0.0.0
LABEL io.shardline.image="nats" \
      org.opencontainers.image.title="shardline-nats" \
      org.opencontainers.image.description="nats-server 2.15.1 with JetStream for shardline" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
COPY rootfs/ /
COPY --chown=65534:65534 data/ /data/
USER 65534:65534
EXPOSE 4222 6222 8222
ENTRYPOINT ["/usr/local/bin/nats-server"]
CMD ["-c", "/etc/nats/nats.conf"]
