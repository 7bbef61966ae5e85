# One image for every CLM process (web, workers, beat, events, flower, migrate).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/clm
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install .
RUN useradd --create-home clm && mkdir -p /var/clm && chown clm /var/clm
USER clm
ENV CLM_VAR_DIR=/var/clm CLM_DATA_DIR=/var/clm/data CLM_ARTIFACT_ROOT=/var/clm/artifacts
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "app:create_app()"]
