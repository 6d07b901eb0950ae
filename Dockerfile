# pushrec: one image for every process (worker, scheduler, index build); the command picks.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The thread limits the code sets (indexing.configure_threads) hold for the calling
    # thread only; pool threads, and numpy at import, would start a thread per core.
    # The nightly index build then runs on one thread too.
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY indexing ./indexing
COPY push ./push
RUN pip install ".[s3]" && rm -rf /src

# The index folder exists in the image, owned by pushrec, so a named volume mounted
# there starts with that owner (Docker copies it) and the index build can write it.
RUN useradd --create-home --uid 10001 pushrec \
    && mkdir -p /var/lib/pushrec/index && chown -R pushrec: /var/lib/pushrec
USER pushrec
WORKDIR /var/lib/pushrec
ENV PUSHREC_STATE_DIR=/var/lib/pushrec

ENTRYPOINT ["pushrec"]
CMD ["--help"]
