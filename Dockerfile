# The one image every service of docker-compose.yml runs: the server's code and its locked
# packages only (no tests, benchmark or local databases: see .dockerignore), as a non-root user.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin stopchat
WORKDIR /app
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --require-hashes -r requirements/runtime.txt
COPY manage.py ./
COPY chatproj chatproj
COPY chat chat
COPY streaming streaming
COPY templates templates
COPY static static
# Hashed file names and compressed copies, served by whitenoise (settings find the manifest).
RUN DEBUG=0 SECRET_KEY=collectstatic-only python manage.py collectstatic --no-input
USER stopchat
EXPOSE 8000
CMD ["python", "-m", "chatproj.serve", "--host", "0.0.0.0", "--port", "8000"]
