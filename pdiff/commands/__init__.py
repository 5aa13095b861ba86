"""The subcommands of `python -m pdiff` (pdiff/cli.py builds the parser from them), one module per group: build
(collect, train), measure (sample, evaluate), studies (transfer, loto, trunks), hub (push, pull); common holds the
flags and conversions they share. Each subcommand is `add_<cmd>(sub)`, ending in `set_defaults(func=cmd_<cmd>)`,
and `cmd_<cmd>(args)`: the flags turned into the library's settings objects, once, and one call."""
