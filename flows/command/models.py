"""``gill models|config|model|import-official``: backbones, configs, the model's parameter summary, and the
conversion of the official GILL release."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from flows.command import add_command, add_group
from flows.command.config_args import add_config_args, resolve_config
from gill.factory import derive_dims
from gill.hub import check_backbones, missing_weights_error
from gill.model import summary
from gill.official import import_official
from gill.presets import PRESETS
from gill.zoo import build_tiny_zoo
from gill.zoo.tiny import build_world_sd, ship_tiny_zoo, shipped_zoo_dir


def _out(text: str = "") -> None:
    """Write a line of command output to stdout (results, not logs)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- models ----------------------------------------------------------------------------------------------


def cmd_models_build_tiny(args: argparse.Namespace) -> int:
    """Build the tiny zoo into --out."""

    if args.ship:
        manifest = ship_tiny_zoo(seed=args.seed)
        _out(f"tiny zoo built and written to {shipped_zoo_dir()} in {manifest.build_seconds:.1f} s")
    else:
        manifest = build_tiny_zoo(args.out, seed=args.seed)
        _out(f"tiny zoo written to {args.out} in {manifest.build_seconds:.1f} s")
    for name, digest in manifest.components.items():
        _out(f"  {name:5s} sha256 {digest[:16]}")
    return 0


def cmd_models_build_world_sd(args: argparse.Namespace) -> int:
    """Train the world SD from scratch and write it (default: over the shipped weights in data_manifests)."""

    folder, report = build_world_sd(seed=args.seed, out=args.out, progress=_out)
    _out(f"world SD written to {folder} in {sum(report.seconds.values()) / 60:.1f} min ({report.seconds})")
    _out("check its quality: python bench/world_sd.py --sd " + str(folder))
    return 0


def cmd_models_check(args: argparse.Namespace) -> int:
    """Report, for each backbone, whether it is available locally; exit 3 if any is missing."""

    config = resolve_config(args)
    statuses = check_backbones(config.backbones)
    if args.json:
        _out(
            json.dumps(
                [
                    {
                        "role": s.role,
                        "id": s.ref.id,
                        "revision": s.ref.revision,
                        "available": s.available,
                        "local_dir": str(s.local_dir) if s.local_dir else None,
                        "problem": s.problem,
                    }
                    for s in statuses
                ],
                indent=2,
            )
        )
    else:
        _out(f"preset: {config.preset}")
        for s in statuses:
            mark = "ok     " if s.available else "MISSING"
            _out(f"  {mark} {s.role:12s} {s.ref.id}" + (f"\n          {s.problem}" if s.problem else ""))
    missing = [s for s in statuses if not s.available]
    if missing and not args.json:
        sys.stderr.write(missing_weights_error(missing, config.preset).render() + "\n")
    return 3 if missing else 0


# -- model ----------------------------------------------------------------------------------------------


def cmd_model_summary(args: argparse.Namespace) -> int:
    """Print per-module trainable/frozen parameter counts (no weights needed) next to the released GILL's."""

    _out(summary(resolve_config(args)).render())
    return 0


def cmd_import_official(args: argparse.Namespace) -> int:
    """Convert an official GILL release folder (model_args.json, pretrained_ckpt.pth.tar) into our format."""

    report = import_official(args.dir, args.out, lm=args.lm, vision=args.vision, sd=args.sd)
    _out(report.render())
    return 0


# -- config ----------------------------------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print (or save) the resolved config and the dims read from the backbones' configs."""

    config = resolve_config(args)
    payload = {"config": config.to_dict()}
    if not args.no_dims:
        payload["derived_dims"] = asdict(derive_dims(config))
    if args.out:
        config.save(args.out)
        _out(f"config written to {args.out}")
    _out(json.dumps(payload, indent=2, sort_keys=True))
    return 0


def cmd_config_presets(args: argparse.Namespace) -> int:
    """List the named presets."""

    for name, factory in PRESETS.items():
        _out(f"{name:6s} {(factory.__doc__ or '').strip().splitlines()[0]}")
    return 0


# -- parsers ---------------------------------------------------------------------------------------------


def add_model_parsers(groups: argparse._SubParsersAction) -> None:
    """Register ``models``, ``config``, ``model`` and ``import-official`` on the top-level ``gill`` parser."""
    models = add_group(groups, "models")
    p = models.add_parser("build-tiny", help="build the tiny model zoo from scratch (the world SD is copied)")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, help="folder to write the zoo into")
    dest.add_argument("--ship", action="store_true", help="rebuild the zoo that ships in data_manifests/tiny_zoo")
    p.add_argument("--seed", type=int, default=0, help="seed for tokenizer corpus and weights")
    p.set_defaults(func=cmd_models_build_tiny)
    p = models.add_parser("build-world-sd", help="train the tiny zoo's Stable Diffusion on the shapes world (slow)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data and noise")
    p.add_argument("--out", type=Path, help="folder for world_sd/ and world_sd.json (default: the shipped location)")
    p.set_defaults(func=cmd_models_build_world_sd)
    p = models.add_parser("check", help="report whether each backbone is available locally")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models_check)

    config = add_group(groups, "config")
    p = config.add_parser("show", help="print the resolved config and derived dims")
    add_config_args(p)
    p.add_argument("--out", type=Path, help="also save the config JSON here")
    p.add_argument("--no-dims", action="store_true", help="skip reading the backbones' configs")
    p.set_defaults(func=cmd_config_show)
    config.add_parser("presets", help="list the named presets").set_defaults(func=cmd_config_presets)

    model = add_group(groups, "model")
    p = model.add_parser("summary", help="per-module trainable/frozen parameter counts (meta device, no weights)")
    add_config_args(p)
    p.set_defaults(func=cmd_model_summary)

    p = add_command(groups, "import-official")
    p.add_argument("dir", type=Path, help="official release folder (model_args.json, pretrained_ckpt.pth.tar, ...)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--lm", help="LM Hub id or local folder (default: model_args.json's opt_version)")
    p.add_argument("--vision", help="CLIP Hub id or local folder (default: model_args.json's visual_encoder)")
    p.add_argument("--sd", help="Stable Diffusion Hub id or local folder (default: SD v1.5)")
    p.set_defaults(func=cmd_import_official)
