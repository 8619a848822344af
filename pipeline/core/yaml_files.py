"""A YAML file of the configuration read into its pydantic model, every fault one ConfigError
line naming the file and the key (the rules and the census files)."""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_model(path: str | Path, model: type[M], what: str, setting: str) -> M:
    """``path`` read and validated as ``model``; ``what`` names the file in errors ("rules file"),
    ``setting`` the config key that points at it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found; set {setting} in the config to an existing file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{what} {path} is not valid YAML; fix its syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text; save it as UTF-8 and try again") from None
    try:
        return model(**data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top)"
        raise ConfigError(f"{what} {path}: '{loc}' {err['msg'].lower()}; fix it in the file") from None
