FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml ./
COPY chatproj ./chatproj
COPY chat ./chat
COPY streaming ./streaming
RUN pip install --no-cache-dir .
COPY . .
RUN DEBUG=0 SECRET_KEY=build-only python manage.py collectstatic --no-input
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "chatproj.asgi:application"]
