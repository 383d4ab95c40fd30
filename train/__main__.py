"""``python -m train --config configs/X.yaml [key=value ...] [--resume auto|PATH]``.

Same entry under ``torchrun --nproc_per_node N -m train ...`` and the DeepSpeed launcher
(``deepspeed --num_gpus N [--hostfile H] --module train ...``). Options: ``--print-config`` prints the
fully resolved config (every model field, the data section with what it derives from the model) as YAML
and exits; ``--print-ds-config`` prints the generated DeepSpeed JSON and exits; ``--check`` validates the
config (and the JSON, with DeepSpeed's parser) and exits. Exit code 2: a config error, unreadable shards, or
a checkpoint that cannot be used (damaged, refused as unsafe, written with another config or world size);
the message names the key, URL or file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline.faults import LoaderError
from shards.typed_config import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML training config (configs/tiny.yaml, ...)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=2e-4 data.batch_size=2")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest checkpoint in out_dir that verifies; damaged ones are skipped with a warning) "
                        "or a checkpoint dir")
    p.add_argument("--allow-config-change", nargs="?", const="*", default=None, metavar="KEY[,KEY...]",
                   help="on resume, accept these config keys/sections differing from the checkpoint's config "
                        "(e.g. schedule.total_steps); alone: any key")
    p.add_argument("--fresh-data-plan", action="store_true",
                   help="on resume, restore weights/optimizer/step but start the epoch's data anew "
                        "(another world size or worker count)")
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved config (as checkpoints store it) and exit")
    p.add_argument("--print-ds-config", action="store_true", help="print the generated DeepSpeed JSON and exit")
    p.add_argument("--check", action="store_true", help="validate the config and the DeepSpeed JSON, then exit")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from .dist import share_cpu_threads

    share_cpu_threads()  # before anything imports numba
    args = parse_args(argv)
    from .config import load_train_config

    try:
        cfg = load_train_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            from .config import train_config_to_dict

            print(yaml.safe_dump(train_config_to_dict(cfg), sort_keys=False), end="")
            return 0
        if args.print_ds_config or args.check:
            from .dist import select_accelerator

            select_accelerator()
            from .deepspeed_config import build_ds_config, validate_ds_config

            ds = build_ds_config(cfg)
            if args.check:
                validate_ds_config(ds)
                print(f"config OK: {args.config}")
            if args.print_ds_config:
                print(json.dumps(ds, indent=2))
            return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from shards.contracts.checkpoint import CheckpointError

    from .loop import train

    allow = [k.strip() for k in args.allow_config_change.split(",")] if args.allow_config_change else None
    try:
        summary = train(cfg, resume=args.resume, allow_config_change=allow, fresh_data_plan=args.fresh_data_plan)
    except ConfigError as e:  # raised alike on every rank (rank 0 decides): reported once
        if os.environ.get("RANK", "0") == "0":
            print(f"config error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, FileExistsError, FileNotFoundError) as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return 2
    except LoaderError as e:  # unreachable or malformed shards: the message names the URL
        print(f"data error: {e}", file=sys.stderr)
        return 2
    if summary["rank"] == 0:
        print(json.dumps({"done": True, **summary}), flush=True)
    return 0


def _exit_after_error(rc: int) -> None:
    """Leave a failed run without interpreter teardown: the message is already printed, nothing is left to save,
    and tearing down a live gloo process group (and DeepSpeed's threads) at exit can abort the process
    ("terminate called without an active exception", SIGABRT), which would hide the exit code 2 from the launcher."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # the group may already be broken; the exit code is what matters
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    code = main()
    if code:
        _exit_after_error(code)
    sys.exit(code)
