"""`python -m model ...`. The client is handed over first: it must run on a front-end host with
only requests and rich installed, so nothing of the service may be imported before it."""

import sys

if sys.argv[1:2] == ["client"]:
    from client import main as client_main

    sys.exit(client_main(sys.argv[2:]))

from model.cli import main

main()
