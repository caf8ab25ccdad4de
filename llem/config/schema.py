"""JSON Schema export of the experiment and campaign schemas, for editor completion in YAML.

    python -m llem.config.schema --out-dir .schemas
    # then, first line of an experiment YAML:
    # yaml-language-server: $schema=.schemas/experiment.schema.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llem.config.campaign import CampaignConfig
from llem.config.experiment import ExperimentConfig

SCHEMAS: dict[str, type[BaseModel]] = {"experiment": ExperimentConfig, "campaign": CampaignConfig}


def json_schema(which: str) -> dict[str, Any]:
    """The JSON Schema of one model; Hydra's `defaults` list is allowed on top so conf files validate."""
    model = SCHEMAS[which]
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("properties", {})["defaults"] = {
        "type": "array",
        "description": "Hydra defaults list (composition only; not part of the validated config).",
    }
    return schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llem.config.schema", description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", choices=[*SCHEMAS, "all"], default="all")
    parser.add_argument("--out-dir", type=Path, help="write <name>.schema.json files here instead of stdout")
    args = parser.parse_args(argv)
    names = list(SCHEMAS) if args.which == "all" else [args.which]
    if args.out_dir is None:
        payload: Any = json_schema(names[0]) if len(names) == 1 else {n: json_schema(n) for n in names}
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = args.out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(json_schema(name), indent=2) + "\n")
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
