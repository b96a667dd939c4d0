# One image for every process of the stack; docker-compose.yml picks the
# command. Models are mounted at /models (MODEL_DIR); nothing is downloaded
# at run time unless AUTO_DOWNLOAD_MODELS=true.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/models \
    CACHE_DIR=/var/lib/mt-service/cache \
    HF_HUB_OFFLINE=1

WORKDIR /app
# An unpinned index gives the CUDA build of torch (several GB). For a CPU-only
# image, pass PyTorch's CPU wheel index: --build-arg TORCH_INDEX_URL=...
ARG TORCH_INDEX_URL=""
COPY requirements.txt .
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    fi \
    && pip install --no-cache-dir -r requirements.txt \
    && useradd --system --home /var/lib/mt-service --create-home mt

COPY . .
USER mt
EXPOSE 5000 5555 8501
CMD ["gunicorn", "--bind", "0.0.0.0:5000", "--workers", "2", "--threads", "16", \
     "--timeout", "60", "api_server:app"]
