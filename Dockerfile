# One image for the API, the workers, beat and the one-shot migrate: the same code, started by different scripts.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
COPY requirements.txt /tmp/requirements.txt
RUN /venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11-slim
# ENV_FILE empty: the container takes its settings from its environment (compose passes .env), never a file.
ENV PATH=/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ENV_FILE=
RUN useradd --create-home --uid 10001 app
COPY --from=build /venv /venv
WORKDIR /app
COPY backend/ backend/
COPY worker/ worker/
USER app
EXPOSE 8000
CMD ["backend/start-api.sh", "--bind", "0.0.0.0:8000"]
