"""`lstmcli pretrain`: unlabelled text in, a run folder whose best/ `train --init-from` starts from."""

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
def pretrain(
    config: Annotated[str | None, typer.Option(
        help="a TOML config file, or the name of a shipped one; flags override its values")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue a stopped pretraining run folder")] = None,
    quiet: Quiet = False,
    progress: ProgressOpt = None,
    json_out: json_option("metrics.json and the run folder") = False,
    force: Annotated[bool, typer.Option("--force", help="pretrain into an --out folder that is not empty")
                     ] = False,
    **fields: Any,
) -> None:
    """Pretrain the embedding and recurrent encoder as language models on unlabelled text; prints the run
    folder, whose best/ `lstmcli train --init-from` starts a classifier from.

    The text is --unlabelled (a text file with a document per line, a folder of .txt files, or a
    CSV/TSV/JSONL file's --text-column), else the training split of --dataset. A bidirectional encoder
    learns a forward and a backward language model, one per direction, through one adaptive softmax.
    Ctrl-C or SIGTERM saves last/ and exits 130; --resume RUN_DIR continues where it stopped.
    """
    from lstmcli import api
    api.tune_process()
    if resume is not None:
        given = sorted(k for k, v in fields.items() if v is not None) + (["config"] if config else [])
        if given or force:
            flag = (given or ["force"])[0].replace("_", "-")
            raise LstmcliError(f"--resume continues a run with its own config; drop --{flag}")
        run_dir = api.resume_pretraining(resume)
    else:
        run_dir = api.pretrain(config, force=force, **fields)
    from lstmcli.runtime import distributed
    if not distributed.from_env().is_main:
        return
    if json_out:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        typer.echo(json.dumps({"run_dir": str(run_dir), "lstmcli": __version__, **metrics}))
    else:
        typer.echo(str(run_dir))
