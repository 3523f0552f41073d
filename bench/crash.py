"""bench/run crash: kill -9 of ringmaild under load (loss, and duplicates
against the bound). The scenario is bench/restart.py's with SIGKILL instead of
SIGTERM; see its docstring and bench/README.md."""

import sys

import restart

if __name__ == "__main__":
    sys.exit(restart.main(sys.argv[1:], mode="crash"))
