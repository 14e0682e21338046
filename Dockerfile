# Two stages: the first builds wheels from the source tree, the second installs only those, so
# the image holds no source checkout, no build tools and nothing .dockerignore keeps out (var/
# with the master key and admin token, .venv/, .git/).
FROM python:3.11-slim AS build
WORKDIR /src
# The build context is what .dockerignore lets through; it stays in this stage.
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels keyturn && rm -rf /wheels
WORKDIR /var/lib/keyturn
USER nobody
CMD ["keyturn", "api"]
