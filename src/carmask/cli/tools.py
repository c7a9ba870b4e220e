"""`carmask serve`, `synth` and `export`: the service and the tools around the models."""

from __future__ import annotations

from pathlib import Path

import click

from carmask.cli.common import InputError, check_output, default_signals, info, main, verbosity_options, writing
from carmask.cli.options import check_model, check_refiner, device_option, model_option, refiner_option, size_callback
from carmask.io import MiB

OPSETS = (9, 20)  # the ONNX opset versions torch's exporter writes


@main.command(short_help="Serve the HTTP API and the web page.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@model_option
@refiner_option
@device_option
@click.option(
    "--api-key",
    envvar="CARMASK_API_KEY",
    help="Require this X-Api-Key on the API (also from $CARMASK_API_KEY). Default: no key.",
)
@click.option(
    "--allow-origin",
    multiple=True,
    metavar="ORIGIN",
    help="Another origin (scheme://host:port) whose pages may call the API; repeatable. "
    "Default: only pages served by this server.",
)
@click.option(
    "--allow-host",
    multiple=True,
    metavar="NAME",
    help="A host name clients use to reach the server (studio.example); repeatable. Default: "
    "localhost and IP addresses only (other names are refused, against DNS rebinding).",
)
@click.option("--max-upload-mib", default=25.0, show_default=True, help="Largest request body.")
@click.option("--concurrency", type=int, help="Photos worked on at once. Default: 2-4 by cores.")
def serve(host, port, model, refiner, device, api_key, allow_origin, allow_host, max_upload_mib, concurrency):
    """Serve the HTTP API and the web page (POST /api/cutout, POST /v1.0/removebg, GET /health, GET /)."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.UsageError(
            f"carmask serve needs the serve extra ({', '.join(missing)} not installed): pip install 'carmask[serve]'"
        )
    from carmask.serve.guard import host_name, origin

    for option, check, values in (("--allow-origin", origin, allow_origin), ("--allow-host", host_name, allow_host)):
        try:
            [check(value) for value in values]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None
    check_model(model)
    check_refiner(refiner, model, device)
    from carmask.serve import run

    with default_signals():  # uvicorn's: the first drains the requests in flight, a second quits
        run(
            host=host,
            port=port,
            model=model,
            refiner=refiner,
            device=device,
            api_key=api_key,
            allow_origins=allow_origin,
            allow_hosts=allow_host,
            max_upload_bytes=int(max_upload_mib * MiB),
            max_concurrency=concurrency,
        )


@main.command(short_help="Write a synthetic turntable dataset.")
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--cars", default=4, show_default=True, type=click.IntRange(min=1), help="Cars with masks (train/).")
@click.option(
    "--test-cars", default=1, show_default=True, type=click.IntRange(min=0), help="Cars without masks (test/)."
)
@click.option(
    "--views",
    default=16,
    show_default=True,
    type=click.IntRange(min=1, max=99),
    help="Views of each car, named <car>_<NN>.jpg.",
)
@click.option("--size", callback=size_callback, default="192x128", show_default=True, metavar="WxH", help="Photo size.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into a folder that already holds files (files of the same names are replaced, others kept).",
)
@verbosity_options
def synth(output, cars, test_cars, views, size, seed, overwrite):
    """Write a synthetic turntable dataset (Kaggle layout, exact masks) to OUTPUT."""
    from carmask.synth import make_dataset

    check_output(output, folder=True, overwrite=overwrite)
    with writing(output):
        make_dataset(output, cars=cars, views=views, size=size, seed=seed, test_cars=test_cars)
    info(
        f"wrote {output}: {cars} car(s) of {views} views with masks in train/ and train_masks/"
        + (f", {test_cars} in test/" if test_cars else "")
    )


@main.command("export", short_help="Export a model to ONNX.")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file to write, e.g. model.onnx.")
@click.option(
    "--opset",
    default=17,
    show_default=True,
    type=click.IntRange(*OPSETS),
    help=f"ONNX opset version (torch's exporter writes {OPSETS[0]} to {OPSETS[1]}).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@verbosity_options
def export_onnx(model, output, opset, overwrite):
    """Export MODEL (a shipped name or a checkpoint) to ONNX, for onnxruntime or --model."""
    from carmask.models import refiner
    from carmask.onnx_export import export

    if refiner.is_refiner(model):
        raise click.UsageError(
            f"{model} is an edge refiner, not a coarse model: export makes ONNX files of "
            "coarse models only, and the refiner runs in torch after one"
        )
    check_output(output, overwrite=overwrite)
    check_model(model)
    try:
        with writing(output):
            export(model, output, opset=opset)
    except ImportError as exc:
        raise click.UsageError(str(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None
    info(f"wrote {output}")
