# One image for every CLM process (web, workers, beat, events, flower, migrate).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/clm
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
# The s3 extra (boto3): the same image keeps its files in an object store when
# CLM_DATA_DIR / CLM_ARTIFACT_ROOT are s3://bucket/prefix (deploy/kubernetes does).
RUN pip install '.[s3]'
# The volume mount points exist and belong to clm, so new named volumes do too. A fixed,
# numeric uid: Kubernetes' runAsNonRoot can only verify a numeric USER, and
# deploy/kubernetes runs its pods as this uid.
RUN groupadd --gid 1000 clm && useradd --uid 1000 --gid clm --create-home clm \
    && mkdir -p /var/clm/data /var/clm/artifacts && chown -R clm:clm /var/clm
USER 1000:1000
ENV CLM_VAR_DIR=/var/clm CLM_DATA_DIR=/var/clm/data CLM_ARTIFACT_ROOT=/var/clm/artifacts
VOLUME ["/var/clm/data", "/var/clm/artifacts"]
EXPOSE 8000 5555
# The API by default; compose.yaml runs every other process from this image. SIGTERM is
# each process's graceful stop (`clm worker`: a soft shutdown bounded by
# CLM_WORKER_SOFT_SHUTDOWN_TIMEOUT_S; `clm serve`: gunicorn's graceful timeout).
CMD ["clm", "serve", "--host", "0.0.0.0", "--port", "8000"]
