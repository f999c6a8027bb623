"""The ``magic8`` command: serve, build the demo model, convert boosters, list models."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .config import ENV_PREFIX, PROJECT_ROOT, ConfigError, load_settings

if TYPE_CHECKING:
    from kernels.registry import FeatureRegistry

#: Thread pools per worker: N workers on N cores must not each start N threads (SPEC §7).
WORKER_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "POLARS_MAX_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class _Commands(click.Group):
    """The subcommands; ``convert`` is imported only when it is asked for.

    PERF: ``convert.command`` pulls in xgboost, scikit-learn and scipy (~2.5 s of imports);
    importing it for every command kept ``magic8 serve`` from being ready within SPEC §8's 3 s.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand name, ``convert`` included."""
        return sorted({*super().list_commands(ctx), "convert"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The subcommand called ``cmd_name``, importing ``convert`` on demand."""
        if cmd_name == "convert":
            from convert.command import convert_command

            return convert_command
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_Commands,
    context_settings={"auto_envvar_prefix": "MAGIC8", "help_option_names": ["-h", "--help"]},
)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Win probabilities for Magic8 0DTE option orders."""
    if ctx.invoked_subcommand == "convert":
        from convert.command import KNOWN_FEATURES_KEY

        ctx.meta[KNOWN_FEATURES_KEY] = _registry_check()


def _registry_check() -> Callable[[list[str]], None]:
    """Return the feature registry's check for ``magic8 convert``, built on first use."""
    registries: list[FeatureRegistry] = []

    def check(names: list[str]) -> None:
        """Raise ValueError listing every name the configured registry does not know."""
        if not registries:
            from .service import make_registry

            try:
                registries.append(make_registry(load_settings()))
            except ConfigError as ex:
                raise ValueError(f"cannot build the feature registry: {ex}") from None
        registries[0].plan(names)

    return check


def _export(name: str, value: object | None) -> None:
    # The CLI hands its flags to the server (and to every gunicorn worker) as the same
    # MAGIC8_PREDICTOR_* variables the settings read, so there is one way in.
    if value is not None:
        os.environ[ENV_PREFIX + name] = str(value)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="YAML configuration file (default: config/config.yaml).",
)
"""The ``--config`` option every command that reads settings takes."""


@main.command()
@click.option("--host", default=None, help="Interface to bind (server.host).")
@click.option("--port", type=int, default=None, help="TCP port (server.port).")
@click.option(
    "--models",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Model repository (prediction.models_dir).",
)
@config_option
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
        # The CLI becomes the gunicorn master: no extra process between it and its supervisor.
        os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(conf)])  # noqa: S606

    import uvicorn

    from .protocol import StampingProtocol
    from .workers import DrainingServer

    config = uvicorn.Config(
        "inference.app:create_app",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        lifespan="on",
        access_log=False,
        log_config=None,
        limit_concurrency=settings.server.limit_concurrency,
        timeout_graceful_shutdown=int(settings.server.graceful_timeout_s),
        http=StampingProtocol,
    )
    DrainingServer(config, settings.server.drain_s).run()


@main.command()
@click.option(
    "--source",
    type=click.Choice(["ibkr", "synthetic", "replay"]),
    default="synthetic",
    show_default=True,
    help="Where the bars come from (ibkr: the one IB connection of the deployment).",
)
@click.option(
    "--redis",
    "redis_address",
    default=None,
    help="redis://host:port/db to publish to (default: data_source.redis).",
)
@click.option(
    "--symbols", default=None, help="Comma-separated tickers (default: the universe plus VIX)."
)
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between beats."
)
@click.option(
    "--keep-bars",
    type=click.IntRange(21, 2000),
    default=300,
    show_default=True,
    help="Bars kept per symbol.",
)
@click.option(
    "--replay-path",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Replay: folder of {SYMBOL}.parquet/.csv (default: data_source.replay.path).",
)
@click.option(
    "--day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Replay: the New York session to publish (default: the newest in the files).",
)
@click.option(
    "--speed",
    type=float,
    default=1.0,
    show_default=True,
    help="Replay: market seconds per real second, from the day's 09:30.",
)
@config_option
def feed(
    source: str,
    redis_address: str | None,
    symbols: str | None,
    interval: float,
    keep_bars: int,
    replay_path: Path | None,
    day: datetime | None,
    speed: float,
    config_path: Path | None,
) -> None:
    """Publish bars, quotes and a heartbeat to Redis: the one process that talks to IB."""
    import asyncio
    import signal

    from providers.base import MarketDataProvider, ProviderError
    from providers.calendar import session_open
    from providers.feed import FeedPublisher, replay_clock
    from providers.replay import ReplayProvider

    from .logs import configure_logging
    from .service import make_provider, market_symbols, redis_url

    if config_path is not None:
        _export("CONFIG", config_path.resolve())
    try:
        # The source holds as much history as the feed keeps in Redis.
        settings = load_settings(data_source={"history_bars": keep_bars})
    except ConfigError as ex:
        raise click.ClickException(str(ex)) from None
    configure_logging(settings.system.log_level)
    tickers = (
        [part.strip().upper() for part in symbols.split(",") if part.strip()]
        if symbols
        else list(market_symbols(settings))
    )
    provider: MarketDataProvider
    clock = None
    if source == "replay":
        replay = ReplayProvider(replay_path or settings.data_source.replay.path, tickers)
        try:
            replay.load()
        except ProviderError as ex:
            raise click.ClickException(str(ex)) from None
        sessions = replay.sessions()
        session = day.date() if day is not None else sessions[-1]
        if session not in sessions:
            raise click.ClickException(f"no bars on {session}; the files hold {sessions}")
        clock = replay_clock(session_open(session), speed)
        provider = replay
    else:
        try:
            provider, _ = make_provider(source, settings, tickers)
        except ConfigError as ex:
            raise click.ClickException(str(ex)) from None
    publisher = FeedPublisher(
        provider,
        redis_address or redis_url(settings),
        tickers,
        interval_s=interval,
        keep_bars=keep_bars,
        clock=clock,
        channel_template=settings.data_source.redis.channels.price_data,
        heartbeat_channel=settings.data_source.redis.channels.heartbeat,
        vix_channel=settings.data_source.redis.channels.vix_data,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        await publisher.run(stop)

    click.echo(f"feed: {source} -> {publisher.redis_url} ({', '.join(publisher.symbols)})")
    asyncio.run(run())


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
@click.option("--json", "as_json", is_flag=True, help="Print what GET /models shows, as JSON.")
def list_models(repository: Path | None, as_json: bool) -> None:
    """Verify and list the models of a repository (default: the configured one)."""
    import msgspec

    from convert.command import print_summary

    from .errors import ModelLoadError
    from .repository import load_repository
    from .service import make_registry

    try:
        settings = load_settings()
    except ConfigError as ex:
        raise click.ClickException(str(ex)) from None
    path = repository or Path(settings.prediction.models_dir)
    try:
        model_set = load_repository(path, make_registry(settings), warm=False)
    except ModelLoadError as ex:
        raise click.ClickException(str(ex)) from None
    if as_json:
        listing = {
            "repository": str(model_set.repository),
            "models": [model.describe() for model in model_set.models],
        }
        click.echo(msgspec.json.format(msgspec.json.encode(listing), indent=2))
        return
    print_summary([model.manifest for model in model_set.models])


@main.command("bench")
@click.option("--quick", is_flag=True, help="The CI budget: the whole suite in under 3 minutes.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON report here.",
)
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Draw the history as a PNG; alone, draw and exit without running.",
)
@click.option(
    "--models",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Model repository (default: the configured one).",
)
@click.option("--http/--no-http", default=True, help="Run the HTTP benchmarks on 127.0.0.1.")
@click.option("--peer/--no-peer", default=True, help="Time the previous design beside ours.")
@click.option(
    "--record/--no-record", default=None, help="Append to bench/history (default: on main)."
)
@click.option("--gate/--no-gate", default=True, help="Exit 1 when the regression gate fails.")
def bench(
    quick: bool,
    json_path: Path | None,
    chart_path: Path | None,
    models: Path | None,
    http: bool,
    peer: bool,
    record: bool | None,
    gate: bool,
) -> None:
    """Benchmark against SPEC §8: kernels, inference, pipeline, HTTP, the previous design."""
    # One thread per native pool, as in a worker, set before numba and polars load.
    os.environ.update(WORKER_THREAD_ENV)
    # bench/ lives in the source checkout, not in the installed packages (it carries the
    # peer, the load tests and the committed history), so import it from the checkout.
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    try:
        from bench import runner
    except ModuleNotFoundError as ex:
        message = f"magic8 bench needs the source checkout's bench/: {ex}"
        raise click.ClickException(message) from None
    options = runner.Options(
        quick=quick,
        json_path=json_path,
        models=models,
        http=http,
        peer=peer,
        record=record,
        gate=gate,
    )
    raise SystemExit(runner.main(options, chart_path))


if __name__ == "__main__":
    main()
