"""atrous serve: the HTTP server, one option per ``Settings`` field."""

import argparse
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    from app.settings import Settings

    parser = commands.add_parser(
        "serve", help="run the HTTP server",
        description="Every option is also an ATROUS_* environment variable; options win.")
    # One option per Settings field, so the CLI never drifts from the environment
    # variables. Values stay strings (booleans are --x/--no-x): Settings parses and
    # validates them exactly as it does ATROUS_* variables.
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"ATROUS_{name.upper()}"
        default: object = "unset" if field.default is None else field.default
        if field.default_factory is not None:
            default = "per device"
        help_text = f"{field.description or ''} [{env}, default {default}]".strip()
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, metavar=name.upper(), help=help_text)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from app.main import serve
    from app.settings import Settings

    overrides = {k: v for k, v in vars(args).items()
                 if k in Settings.model_fields and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        print(f"atrous serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    serve(settings)
    return 0
