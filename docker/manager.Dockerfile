# shardline manager: the control plane; with --runtime docker it needs /var/run/docker.sock (so it runs as root).
# FROM scratch: no base image is pulled. The build context is target/docker/manager, assembled by
# docker/build-images.sh (the release binary, the shared libraries ldd lists, the loader).
FROM scratch
ARG VERSION=0.0.0
LABEL io.shardline.image="manager" \
      org.opencontainers.image.title="shardline-manager" \
      org.opencontainers.image.description="shardline manager" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
COPY rootfs/ /
COPY --chown=65534:65534 data/ /data/
ENV NO_COLOR=1

EXPOSE 5001
ENTRYPOINT ["/usr/local/bin/manager"]
CMD ["--listen", "0.0.0.0:5001"]
