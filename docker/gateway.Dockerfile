# shardline gateway: the public HTTP API (port 5000).
# FROM scratch: no base image is pulled. The build context is target/docker/gateway, assembled by
# docker/build-images.sh (the release binary, the shared libraries ldd lists, the loader).
FROM scratch
ARG VERSION=0.0.0
LABEL io.shardline.image="gateway" \
      org.opencontainers.image.title="shardline-gateway" \
      org.opencontainers.image.description="shardline gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
COPY rootfs/ /
COPY --chown=65534:65534 data/ /data/
ENV NO_COLOR=1
USER 65534:65534
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["--listen", "0.0.0.0:5000"]
