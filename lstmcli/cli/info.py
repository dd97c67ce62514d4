"""`lstmcli datasets`, `configs` and `env`: what is built in, what is shipped, and what this machine is."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from lstmcli.cli.options import json_option
from lstmcli.exits import user_errors


@user_errors
def datasets(json_out: json_option("one object per dataset") = False) -> None:
    """The built-in datasets: name, classes, what they hold, and the upstream files (LSTMCLI_MIRROR
    replaces their host with a folder or URL of your own)."""
    from lstmcli.data.registry import REGISTRY
    for ds in REGISTRY.values():
        files = {role: {"name": f.name, "url": f.url, "md5": f.md5} for role, f in ds.files.items()}
        if json_out:
            typer.echo(json.dumps({"name": ds.name, "labels": list(ds.label_names), "about": ds.about,
                                   "files": files}))
        else:
            typer.echo(f"{ds.name}: {', '.join(ds.label_names)}; {ds.about}")
            for f in ds.files.values():
                typer.echo(f"  {f.url} (md5 {f.md5})")


@user_errors
def configs(json_out: json_option("one object per config") = False) -> None:
    """The configs shipped with lstmcli (`train --config NAME` takes one by name from any folder): what
    each is for, and its result (benchmarks/RESULTS.md has the whole tables)."""
    from lstmcli.configs import listing
    rows = listing()
    width = max(len(c["name"]) for c in rows)
    for c in rows:
        if json_out:
            typer.echo(json.dumps(c))
            continue
        typer.echo(f"{c['name']:<{width}}  {c['about']}")
        if c["result"]:
            typer.echo(f"{'':<{width}}  result: {c['result']}")


@user_errors
def env(
    json_out: json_option("the same facts") = False,
    build: Annotated[bool, typer.Option("--build", help="also build (or load) the C++ kernels now and say "
                                        "how that went")] = False,
) -> None:
    """What a bug report needs: lstmcli, torch and Python versions, the CPU and what torch uses of it,
    bf16 support, the C++ kernels, CUDA devices and threads."""
    from lstmcli.runtime.envinfo import collect, format_text
    info = collect(build_kernels=build)
    typer.echo(json.dumps(info) if json_out else format_text(info))
