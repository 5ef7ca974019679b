# shardline shard-server: one shard server: SQLite replicas applying the WAL (port 8080, data in /data).
# FROM scratch: no base image is pulled. The build context is target/docker/shard-server, assembled by
# docker/build-images.sh (the release binary, the shared libraries ldd lists, the loader).
FROM scratch
ARG VERSION=0.0.0
LABEL io.shardline.image="shard-server" \
      org.opencontainers.image.title="shardline-shard-server" \
      org.opencontainers.image.description="shardline shard-server" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
COPY rootfs/ /
COPY --chown=65534:65534 data/ /data/
ENV NO_COLOR=1
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/shard-server"]
CMD ["--listen", "0.0.0.0:8080", "--data-dir", "/data"]
