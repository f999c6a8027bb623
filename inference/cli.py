"""The ``magic8`` command: serve, build the demo model, convert boosters, list models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .config import ENV_PREFIX, PROJECT_ROOT, ConfigError, load_settings

#: Thread pools per worker: N workers on N cores must not each start N threads (SPEC §7).
WORKER_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "POLARS_MAX_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@click.group(
    context_settings={"auto_envvar_prefix": "MAGIC8", "help_option_names": ["-h", "--help"]}
)
def main() -> None:
    """Win probabilities for Magic8 0DTE option orders."""


def _export(name: str, value: object | None) -> None:
    # The CLI hands its flags to the server (and to every gunicorn worker) as the same
    # MAGIC8_PREDICTOR_* variables the settings read, so there is one way in.
    if value is not None:
        os.environ[ENV_PREFIX + name] = str(value)


@main.command()
@click.option("--host", default=None, help="Interface to bind (server.host).")
@click.option("--port", type=int, default=None, help="TCP port (server.port).")
@click.option(
    "--models",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Model repository (prediction.models_dir).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="YAML configuration file (default: config/config.yaml).",
)
@click.option("--workers", type=int, default=None, help="Worker processes; > 1 runs gunicorn.")
def serve(
    host: str | None,
    port: int | None,
    models: Path | None,
    config_path: Path | None,
    workers: int | None,
) -> None:
    """Serve the HTTP API (uvicorn; gunicorn with uvicorn workers when --workers > 1)."""
    if config_path is not None:
        _export("CONFIG", config_path.resolve())
    _export("API_HOST", host)
    _export("API_PORT", port)
    _export("MODEL_PATH", models.resolve() if models else None)
    _export("WORKERS", workers)
    try:
        settings = load_settings()
    except ConfigError as ex:
        raise click.ClickException(str(ex)) from None
    if settings.server.workers > 1:
        os.environ.update(WORKER_THREAD_ENV)
        conf = PROJECT_ROOT / "gunicorn.conf.py"
        os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(conf)])

    import uvicorn

    uvicorn.run(
        "inference.app:create_app",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


@main.command("demo-model")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=PROJECT_ROOT / "models"
)
@click.option("--seed", type=int, default=8, show_default=True, help="Simulator and training seed.")
@click.option("--days", type=int, default=160, show_default=True, help="Simulated trading days.")
@click.option(
    "--holdout",
    type=float,
    default=0.25,
    show_default=True,
    help="Share of the latest days held out.",
)
def demo_model(out: Path, seed: int, days: int, holdout: float) -> None:
    """Build the demo model from the simulator and write it to the repository."""
    from convert.demo import build_demo_model

    manifest = build_demo_model(out, seed=seed, days=days, holdout=holdout, progress=True)
    click.echo(
        f"wrote {out / manifest.name / manifest.version}: held-out AUC "
        f"{manifest.metrics.get('auc_holdout', float('nan')):.4f}, parity max |diff| "
        f"{manifest.parity.max_abs_diff:.2e} on {manifest.parity.rows} rows"
    )


@main.command("models")
@click.argument(
    "repository", type=click.Path(file_okay=False, exists=True, path_type=Path), required=False
)
def list_models(repository: Path | None) -> None:
    """Verify and list the models of a repository (default: the configured one)."""
    from convert.command import print_summary

    from .errors import ModelLoadError
    from .repository import load_repository
    from .service import make_registry

    settings = load_settings()
    path = repository or Path(settings.prediction.models_dir)
    try:
        model_set = load_repository(path, make_registry(settings), warm=False)
    except ModelLoadError as ex:
        raise click.ClickException(str(ex)) from None
    print_summary([model.manifest for model in model_set.models])


def _register_convert() -> None:
    from convert.command import convert_command

    main.add_command(convert_command, "convert")


_register_convert()


if __name__ == "__main__":
    main()
