"""`lstmcli train`: a config (defaults, a TOML file, flags) in, a run folder out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from lstmcli import __version__
from lstmcli.cli.options import ProgressOpt, Quiet, json_option, with_config_options
from lstmcli.errors import LstmcliError
from lstmcli.exits import user_errors


@with_config_options
@user_errors
def train(
    config: Annotated[str | None, typer.Option(
        help="a TOML config file, or the name of a shipped one (lstmcli configs lists them); flags "
             "override its values")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue a stopped run folder")] = None,
    quiet: Quiet = False,
    progress: ProgressOpt = None,
    json_out: json_option("metrics.json and the run folder") = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="= --report-to tensorboard")] = False,
    force: Annotated[bool, typer.Option("--force", help="train into an --out folder that is not empty: "
                                        "files of the same names are replaced, an earlier run's best/ and "
                                        "last/ removed")] = False,
    skip_memory_check: Annotated[bool, typer.Option(
        "--skip-memory-check", help="start even when the run is estimated to need more memory than is "
                                    "available")] = False,
    **fields: Any,
) -> None:
    """Train a classifier; writes a run folder (config.json, metrics.json, best/, last/) and prints its path.

    Ctrl-C or SIGTERM stops at the next batch, saves last/ with everything needed to continue, and
    exits 130; `--resume RUN_DIR` continues exactly where it stopped. A run folder that holds anything
    is refused unless --force; two trainings into one folder: the second is refused.
    """
    from lstmcli import api
    api.tune_process()
    if tensorboard:
        if fields.get("report_to") not in (None, "tensorboard"):
            raise LstmcliError(f"--tensorboard and --report-to {fields['report_to'].value}: give one of them")
        fields["report_to"] = "tensorboard"
    if resume is not None:
        given = sorted(k for k, v in fields.items() if v is not None) + (["config"] if config else [])
        given += ["force"] if force else []
        if given:
            flag = given[0].replace("_", "-")
            raise LstmcliError(f"--resume continues a run with its own config; drop --{flag}")
        run_dir = api.resume(resume)
    else:
        run_dir = api.train(config, force=force, skip_memory_check=skip_memory_check, **fields)
    from lstmcli.runtime import distributed
    if not distributed.from_env().is_main:
        return  # under torchrun, rank 0 answers for the run
    if json_out:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        typer.echo(json.dumps({"run_dir": str(run_dir), "lstmcli": __version__, **metrics}))
    else:
        typer.echo(str(run_dir))
