"""The `musicedit` command line: the top of the import graph.

One module per command (`edit`, `serve`, `worker`, `dead_letters`), each with
`add_parser(subparsers)` and `run(args) -> int`; a command only parses its arguments and calls
the code that does the work. `cli.main` builds the parser and dispatches. Heavy imports
(torch, the model, the gateway) happen inside `run`, so the gateway's image, which has no
torch, runs `dead-letters` and `serve`.
"""
