from setuptools import setup

setup(
    name="webmacs",
    version="0.1.0",
    description="Lab telemetry server: WebSocket ingest into TimescaleDB, live dashboards",
    license="MIT",
    python_requires=">=3.11",
    packages=[
        "webmacs",
        "webmacs.handlers",
        "webmacs.storage",
        "webmacs.plugins",
        "webmacs.controller",
        "webmacs.migrations",
        "webmacs.migrations.versions",
    ],
    # Alembic lives at the top of the repository (migrations/) and is installed
    # inside the package, so `webmacs migrate` finds it wherever it is installed.
    package_dir={"webmacs.migrations": "migrations", "webmacs.migrations.versions": "migrations/versions"},
    package_data={"webmacs": ["static/*", "static/**/*"], "webmacs.migrations": ["script.py.mako"]},
    include_package_data=True,
    install_requires=[
        "tornado>=6.4",
        "sqlalchemy>=2.0",
        "psycopg2-binary>=2.9",
        "pyjwt[crypto]>=2.8",
        "alembic>=1.13",
        "requests>=2.31",
        "requests-futures>=1.0",
        "argon2-cffi>=23.1",
        "psutil>=5.9",  # the bundled System Monitor plugin (controller side)
        "prometheus-client>=0.20",  # /metrics (webmacs.metrics)
        "orjson>=3.9",  # telemetry frames and broadcast frames (webmacs.jsoncodec)
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-asyncio>=0.23",
            "pytest-timeout>=2.2",
            "playwright>=1.40",
            "schemathesis>=4.0",  # tests/test_openapi.py: fuzzes a live server from /api/v1/openapi.json
        ],
    },
    entry_points={
        "console_scripts": ["webmacs = webmacs.cli:main"],
        "webmacs.plugins": [
            "simulated = webmacs.plugins.simulated:SimulatedPlugin",
            "system = webmacs.plugins.system:SystemPlugin",
            "revpi = webmacs.plugins.revpi:RevPiPlugin",
        ],
    },
)
