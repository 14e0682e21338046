# Two stages: the first builds wheels from the source tree, the second installs only those, so
# the image holds no source checkout, no build tools and nothing .dockerignore keeps out (var/
# with the master key and admin token, .venv/, .git/).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md worker.py ./
COPY keyturn/ keyturn/
COPY workflows/ workflows/
COPY activities/ activities/
COPY executors/ executors/
COPY starter/ starter/
COPY store/ store/
COPY templating/ templating/
COPY requesting/ requesting/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels keyturn && rm -rf /wheels
WORKDIR /var/lib/keyturn
USER nobody
CMD ["keyturn", "api"]
