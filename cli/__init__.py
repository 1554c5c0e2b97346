"""The `plan` command line: parse, call the public API, render a table or the API's JSON."""
