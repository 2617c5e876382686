"""The ``livora`` command: ``livora PIPELINE [flags]`` runs ``python -m pipelines.PIPELINE``."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys

import pipelines


def available() -> list[str]:
    skip = {"cli", "options", "errors", "logs", "quality_gate"}  # modules that are not pipelines
    # a subpackage holds code a pipeline uses (pipelines/report_page: the report's templates), not a pipeline
    return sorted(m.name for m in pkgutil.iter_modules(pipelines.__path__) if m.name not in skip and not m.ispkg)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    names = available()
    if not args or args[0] in ("-h", "--help"):
        print("usage: livora PIPELINE [flags]   (livora PIPELINE --help for its flags)\n\npipelines:")
        for name in names:
            print(f"  {name.replace('_', '-')}")
        return
    name = args[0].replace("-", "_")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0].replace('_', '-')}?)" if close else f"; one of: {', '.join(names)}"
        print(f"livora: unknown pipeline {args[0]!r}{hint}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(f"pipelines.{name}")
    sys.argv = [f"livora {args[0]}", *args[1:]]
    module.main(args[1:])


if __name__ == "__main__":
    main()
